"""`stn-serve batch --shard INDEX/COUNT` and `stn-serve merge`: shards of one folder together hold
every image exactly once, and merging checks that they make up one whole split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stn_serve.batch.shards import Shard, shard_of
from stn_serve.cli import main
from stn_serve.errors import InvalidInputError

COUNT = 3


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """24 small PNG files in three sub-folders."""
    root = tmp_path_factory.mktemp("shards") / "images"
    rng = np.random.default_rng(0)
    for number in range(24):
        path = root / f"part{number % 3}" / f"{number:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue())
    return root


def batch_shard(folder: Path, out: Path, shard: str, repository: Path) -> int:
    return main(["batch", str(folder), "--out", str(out), "--shard", shard,
                 "--repository", str(repository), "--model", "digits", "--device", "cpu",
                 "--progress", "off", "--log-level", "ERROR"])


@pytest.fixture(scope="module")
def shard_outputs(folder, model_repository, tmp_path_factory) -> list[Path]:
    outputs = tmp_path_factory.mktemp("outputs")
    folders = [outputs / f"shard-{index}" for index in range(COUNT)]
    for index, out in enumerate(folders):
        assert batch_shard(folder, out, f"{index}/{COUNT}", model_repository) == 0
    return folders


def every_key(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.png"))


def test_shards_hold_every_image_exactly_once(folder, shard_outputs):
    keys = [[r["file"] for r in lines(out / "predictions.jsonl")] for out in shard_outputs]
    assert sorted(key for shard in keys for key in shard) == every_key(folder)  # once each
    assert all(keys), "with 24 files every one of 3 shards gets some"
    for index, shard in enumerate(keys):
        assert all(shard_of(key, COUNT) == index for key in shard)
        assert json.loads((shard_outputs[index] / "shard.json").read_text())["count"] == COUNT


def test_the_shard_of_a_file_is_a_stable_hash_of_its_relative_path():
    # Fixed values: a change of hash would split a running job's files differently. The last
    # name is the byte 0xE9, not UTF-8: hashed as its bytes.
    assert [shard_of(key, 8) for key in ("a.png", "b/c.png", "\udce9.png")] == [0, 7, 1]
    assert shard_of("a.png", 1) == 0
    assert Shard.parse("2/8") == Shard(2, 8) and str(Shard(2, 8)) == "2/8"
    for bad in ("8/8", "-1/8", "1", "a/b", "1/0"):
        with pytest.raises(InvalidInputError, match="INDEX/COUNT"):
            Shard.parse(bad)


def test_a_bad_shard_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "x", "--out", "y", "--server", "z", "--shard", "3/3"])
    assert "0 <= INDEX < COUNT, got 3/3" in capsys.readouterr().err


def test_one_output_folder_holds_one_shard(folder, shard_outputs, model_repository, capsys):
    assert batch_shard(folder, shard_outputs[0], f"1/{COUNT}", model_repository) == 2
    assert f"holds shard 0/{COUNT}, not 1/{COUNT}" in capsys.readouterr().err


def test_merge_joins_the_shards_and_points_at_their_crops(folder, shard_outputs, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shard_outputs), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert f"merged {COUNT} of {COUNT} shards: 24 predictions, 0 failures" in printed
    records = lines(merged / "predictions.jsonl")
    assert sorted(r["file"] for r in records) == every_key(folder)
    assert all((merged / r["crop"]).is_file() for r in records)
    assert lines(merged / "failures.jsonl") == []


def test_merge_refuses_a_missing_or_repeated_shard(shard_outputs, tmp_path, capsys):
    out = str(tmp_path / "merged")
    assert main(["merge", str(shard_outputs[0]), str(shard_outputs[2]), "--out", out]) == 2
    assert f"shards [1] of {COUNT} are missing; pass --partial" in capsys.readouterr().err
    assert main(["merge", str(shard_outputs[0]), str(shard_outputs[0]), "--out", out]) == 2
    assert f"shard 0/{COUNT} is in both" in capsys.readouterr().err
    assert main(["merge", str(shard_outputs[0]), "--out", out, "--partial"]) == 0
    assert f"merged 1 of {COUNT} shards" in capsys.readouterr().out
    assert main(["merge", str(tmp_path), "--out", out]) == 2
    assert "is not the output of `stn-serve batch --shard`" in capsys.readouterr().err


def test_merge_leaves_out_torn_repeated_and_misplaced_lines(shard_outputs, tmp_path, capsys):
    tampered = tmp_path / "shard-0"
    tampered.mkdir()
    (tampered / "shard.json").write_text((shard_outputs[0] / "shard.json").read_text())
    own = (shard_outputs[0] / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    other = (shard_outputs[1] / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    (tampered / "predictions.jsonl").write_bytes(b"".join([*own, own[0], other[0], b'{"fi']))
    merged = tmp_path / "merged"
    assert main(["merge", str(tampered), *map(str, shard_outputs[1:]), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "left out: 1 lines cut short, 1 repeated lines, 1 lines of another shard" in printed
    assert len(lines(merged / "predictions.jsonl")) == 24
