"""Export into the model repository: files, model.json, metadata, versions, errors, CLI, bench."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from stn_serve.cli import main
from stn_serve.contract import OUTPUT_NAMES, ModelSpec
from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.export import (
    SUPPORTED_OPSETS,
    ParityError,
    export_checkpoint,
    export_model,
    exporter,
)
from stn_serve.export.graph import ServingGraph
from stn_serve.export.parity import TOLERANCES, Tolerance, compare
from stn_serve.export.repository import choose_version, existing_versions, publish
from stn_serve.export.session import cpu_session, run
from stn_serve.models import ModelConfig, build_model
from stn_serve.train.checkpoint import save_checkpoint

LABELS = [str(digit) for digit in range(10)]
SMALL = {"width": 4, "hidden": 16, "loc_width": 4, "loc_hidden": 8}
METADATA_KEYS = {"labels", "input", "normalisation", "transform", "crop_size", "metrics", "versions",
                 "parity", "opset", "outputs"}


def small_config(**changes) -> ModelConfig:
    return ModelConfig(**{**SMALL, "crop_size": (20, 20), **changes})


def fresh_model(config: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its content (empty when root does not exist)."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def exported_with_model(tmp_path_factory):
    """(repository, version folder, the torch model) of a fresh affine ST-CNN exported with
    metrics."""
    repository = tmp_path_factory.mktemp("repository")
    config = small_config(transform="affine", padding_mode="border")
    model = fresh_model(config)
    folder = export_model(model, config, LABELS, repository, "digits", metrics={"test_accuracy": 0.5})
    return repository, folder, model


@pytest.fixture
def exported(exported_with_model):
    """(repository, version folder) of `exported_with_model`."""
    return exported_with_model[:2]


def test_export_writes_the_version_folder(exported):
    repository, folder = exported
    assert folder == repository / "digits" / "1"
    assert sorted(path.name for path in folder.iterdir()) == ["model.json", "model.onnx"]
    # Nothing else in the repository but Triton's model configuration: no staging folder.
    assert sorted(path.name for path in (repository / "digits").iterdir()) == ["1", "config.pbtxt"]


def test_model_json_follows_the_contract(exported):
    _, folder = exported
    description = json.loads((folder / "model.json").read_text())
    spec = ModelSpec.from_json(description, folder / "model.json")  # what the serving side reads
    assert (spec.name, spec.version, spec.labels) == ("digits", 1, tuple(LABELS))
    assert spec.input_shape == (1, 28, 28)
    assert spec.output_shapes == {"logits": (10,), "probabilities": (10,), "crop": (1, 20, 20), "theta": (6,)}
    assert description["transform"] == "affine" and description["crop_size"] == [20, 20]
    assert description["normalisation"] == {"mean": [0.5], "std": [0.5]}
    assert description["opset"] == 20 and description["metrics"] == {"test_accuracy": 0.5}
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "stn_serve"} <= set(description["versions"])
    parity = description["parity"]
    # Verified on the digits test split (64 images) at batch 1 and 64.
    assert parity["batch_sizes"] == [1, 64]
    assert set(parity["outputs"]) == {"logits", "probabilities", "crop", "theta"}
    assert all(figure["ok"] and figure["max_abs_diff"] <= figure["atol"] + figure["rtol"] * figure["max_abs_torch"]
               for figure in parity["outputs"].values())


def test_metadata_props_carry_the_description(exported):
    _, folder = exported
    model = onnx.load(folder / "model.onnx")
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert METADATA_KEYS <= set(metadata)
    description = json.loads((folder / "model.json").read_text())
    assert json.loads(metadata["labels"]) == LABELS
    assert metadata["transform"] == "affine"
    assert json.loads(metadata["parity"]) == description["parity"]
    assert json.loads(metadata["input"])["shape"] == [1, 28, 28]
    # The saved file keeps the grid generator as a local function.
    assert {(f.domain, f.name) for f in model.functions} == {("stn", "AffineGrid"), ("stn", "BaseGrid")}
    onnx.checker.check_model(model, full_check=True)


def test_exported_file_runs_with_a_dynamic_batch(exported):
    _, folder = exported
    session = cpu_session((folder / "model.onnx").read_bytes())
    for batch in (1, 5):
        image = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
        outputs = run(session, {"image": image})
        assert {name: value.shape for name, value in outputs.items()} == {
            "logits": (batch, 10), "probabilities": (batch, 10), "crop": (batch, 1, 20, 20), "theta": (batch, 6)}
        np.testing.assert_allclose(outputs["probabilities"].sum(1), 1.0, rtol=1e-5)


def test_serving_runtime_loads_the_export(exported_with_model):
    from stn_serve.runtime import OnnxModel

    _, folder, model = exported_with_model
    served = OnnxModel(folder).load()
    image = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dict(zip(OUTPUT_NAMES, ServingGraph(model)(image)))
    figures = compare({k: v.numpy() for k, v in expected.items()}, served.predict(image.numpy()), TOLERANCES)
    assert all(figure["ok"] for figure in figures.values()), figures


def test_versions_count_up_and_explicit_ones_are_kept(tmp_path):
    assert choose_version(tmp_path, "digits", None) == 1
    for version in ("1", "5", "not-a-version", ".5.staging-x"):
        (tmp_path / "digits" / version).mkdir(parents=True)
    assert existing_versions(tmp_path, "digits") == [1, 5]
    assert choose_version(tmp_path, "digits", None) == 6
    assert choose_version(tmp_path, "digits", 3) == 3
    for bad in (0, -1, True, 2.0):
        with pytest.raises(InvalidInputError, match="version must be a positive integer"):
            choose_version(tmp_path, "digits", bad)


def test_publish_never_replaces_a_version(tmp_path):
    folder = publish(tmp_path, "digits", 2, {"model.json": b"{}"})
    (folder / "model.onnx").write_bytes(b"kept")
    with pytest.raises(InvalidInputError, match="cannot create"):
        publish(tmp_path, "digits", 2, {"model.json": b"[]"})
    assert snapshot(tmp_path) == {"digits/2/model.json": b"{}", "digits/2/model.onnx": b"kept"}


def test_existing_version_is_refused_and_nothing_changes(exported):
    repository, _ = exported
    before = snapshot(repository)
    config = small_config()
    with pytest.raises(InvalidInputError, match="version 1 of model 'digits' already exists"):
        export_model(fresh_model(config), config, LABELS, repository, "digits", version=1)
    assert snapshot(repository) == before


@pytest.mark.parametrize("opset", [17, 27, "20"])
def test_unsupported_opset_is_refused(tmp_path, opset):
    config = small_config()
    with pytest.raises(InvalidInputError, match="opset must be an integer from 18 to 26"):
        export_model(fresh_model(config), config, LABELS, tmp_path / "repository", "digits", opset=opset)
    assert not (tmp_path / "repository").exists()


@pytest.mark.parametrize(("opset", "mode"), [(18, b"bilinear"), pytest.param(26, b"linear", marks=pytest.mark.slow)])
def test_lowest_and_highest_opsets_export_and_verify(tmp_path, opset, mode):
    # GridSample's mode was renamed from "bilinear" to "linear" in opset 20.
    config = small_config(transform="projective", align_corners=True)
    folder = export_model(fresh_model(config), config, LABELS, tmp_path, "digits", opset=opset)
    model = onnx.load(folder / "model.onnx")
    assert {entry.domain: entry.version for entry in model.opset_import} == {"": opset, "stn": 1}
    sampler = next(node for node in model.graph.node if node.op_type == "GridSample")
    assert {a.name: a.s for a in sampler.attribute}["mode"] == mode
    assert {f.opset_import[0].version for f in model.functions} == {opset}


def test_parity_failure_fails_with_figures_and_writes_nothing(tmp_path, monkeypatch):
    # A tolerance nothing can meet: the real verification path must refuse to publish.
    monkeypatch.setitem(exporter.TOLERANCES, "crop", Tolerance(rtol=0.0, atol=-1.0))
    config = small_config()
    with pytest.raises(ParityError, match=r"crop: max \|diff\| .* > atol -1"):
        export_model(fresh_model(config), config, LABELS, tmp_path / "repository", "digits")
    assert not (tmp_path / "repository").exists()


@pytest.mark.parametrize(("name", "labels", "inputs", "message"), [
    ("../digits", LABELS, None, "model name must be"),
    ("digits", LABELS[:3], None, "need 10 labels"),
    ("digits", LABELS, torch.rand(4, 1, 32, 32), r"verification images must be float32 \[N >= 2, 1, 28, 28\]"),
    ("digits", LABELS, torch.rand(1, 1, 28, 28), r"N >= 2"),
])
def test_bad_arguments_are_named(tmp_path, name, labels, inputs, message):
    config = small_config()
    with pytest.raises(InvalidInputError, match=message):
        export_model(fresh_model(config), config, labels, tmp_path, name, verify_inputs=inputs)
    assert snapshot(tmp_path) == {}


def test_plain_cnn_exports_without_transform(tmp_path):
    config = small_config(arch="cnn")
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    folder = export_model(fresh_model(config), config, LABELS, tmp_path, "baseline", verify_inputs=images)
    description = json.loads((folder / "model.json").read_text())
    spec = ModelSpec.from_json(description, folder / "model.json")
    assert description["transform"] == "none" and spec.output_shapes["theta"] == (0,)
    # Triton refuses a zero-sized dimension: config.pbtxt leaves theta [N, 0] out.
    config_text = (tmp_path / "baseline" / "config.pbtxt").read_text()
    assert 'name: "crop"' in config_text and 'name: "theta"' not in config_text
    assert description["parity"]["batch_sizes"] == [1, 3]
    with pytest.raises(InvalidInputError, match="has no spatial transformer"):
        export_model(fresh_model(config), config, LABELS, tmp_path, "baseline", gradients=True,
                     verify_inputs=images)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    config = small_config(transform="tps", padding_mode="reflection", align_corners=True)
    return save_checkpoint(tmp_path / "model.pt", fresh_model(config), config, LABELS,
                           metrics={"test_accuracy": 0.25})


def test_cli_exports_a_checkpoint_with_gradients(tmp_path, checkpoint, capsys):
    repository = tmp_path / "export"
    with warnings.catch_warnings():
        # torch's note that the inputs' shared batch axis keeps one name is no news to a user.
        warnings.filterwarnings("error", message="# The axis name")
        code = main(["export", str(checkpoint), "--repository", str(repository), "--name",
                     "digits", "--version", "3", "--gradients", "--log-level", "WARNING"])
    assert code == 0
    folder = repository / "digits" / "3"
    (summary,) = capsys.readouterr().out.splitlines()
    assert summary.startswith(f"exported digits v3 to {folder} (gradients.onnx, model.json, "
                              "model.onnx); parity with torch passed at batch sizes [1, ")
    assert re.search(r"largest difference \S+ \(\w+\), gradients \S+ \(grad_\w+\)$", summary)
    assert sorted(path.name for path in folder.iterdir()) == ["gradients.onnx", "model.json", "model.onnx"]
    description = json.loads((folder / "model.json").read_text())
    assert description["transform"] == "tps" and description["metrics"] == {"test_accuracy": 0.25}
    assert all(figure["ok"] for figure in description["parity"]["gradients"]["outputs"].values())
    session = cpu_session((folder / "gradients.onnx").read_bytes())
    assert [i.name for i in session.get_inputs()] == ["image", "theta", "grad_crop"]
    assert [o.name for o in session.get_outputs()] == ["grad_image", "grad_theta"]


def test_export_checkpoint_function(tmp_path, checkpoint):
    folder = export_checkpoint(checkpoint, tmp_path / "export", "digits")
    assert folder == tmp_path / "export" / "digits" / "1"


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"PK\x03\x04truncated"])
def test_cli_refuses_missing_or_corrupt_checkpoints(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    repository = tmp_path / "export"
    code = main(["export", str(path), "--repository", str(repository), "--name", "digits"])
    assert code == 2
    assert str(path) in capsys.readouterr().err
    assert not repository.exists()


def test_missing_checkpoint_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        export_checkpoint(tmp_path / "absent.pt", tmp_path / "export", "digits")


def test_help_states_the_supported_opsets(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"({SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}) (default: 20)" in help_text


def test_bench_export_prints_measured_rows(capsys):
    code = main(["bench", "export", "--transform", "attention", "--batch-sizes", "1", "4",
                 "--repeats", "2", "--warmup", "0", "--log-level", "WARNING"])
    assert code == 0
    out = capsys.readouterr().out
    assert "export (torch.onnx dynamo + stn functions + onnx full check):" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("1", "4")]
    assert [row[0] for row in rows] == ["1", "4"]
    # torch ms, onnxruntime ms, their ratio and the largest output difference, all measured.
    assert all(float(row[1]) > 0 and float(row[2]) > 0 and float(row[4]) < 1e-3 for row in rows)
