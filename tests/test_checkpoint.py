"""Checkpoints: a round trip keeps the model exactly; missing, truncated and foreign files give
clear errors; loading never runs code from the file."""

from __future__ import annotations

import pytest
import torch

from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.models import ModelConfig, build_model
from stn_serve.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint

LABELS = [f"class {i}" for i in range(10)]


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(
        transform="attention", input_size=(42, 42), crop_size=(28, 28), mean=(0.1,), std=(0.3,)
    )
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    model(torch.rand(4, 1, 42, 42)).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    path = save_checkpoint(
        tmp_path / "run" / "last.pt",
        model,
        config,
        LABELS,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=3,
        metrics={"val_accuracy": 0.5},
        train_config={"data": "digits"},
    )
    return path, model.eval(), config


def test_round_trip(saved):
    path, model, config = saved
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_config == config
    assert checkpoint.labels == LABELS
    assert checkpoint.input_shape == [1, 42, 42]
    assert checkpoint.normalisation == {"mean": [0.1], "std": [0.3]}
    assert checkpoint.epoch == 3 and checkpoint.metrics == {"val_accuracy": 0.5}
    assert checkpoint.train_config == {"data": "digits"}
    assert set(checkpoint.versions) >= {"torch", "stn_serve"}
    assert checkpoint.optimizer["param_groups"][0]["lr"] == pytest.approx(5e-4)
    image = torch.rand(2, 1, 42, 42)
    restored = checkpoint.build_model()
    assert not restored.training
    for ours, theirs in zip(model(image), restored(image)):
        assert torch.equal(ours, theirs)


def test_file_is_plain_data(saved):
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    assert not (path.parent / "last.pt.partial").exists()


def test_missing_file(tmp_path):
    with pytest.raises(NotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_truncated_file(saved, tmp_path):
    path, _, _ = saved
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidInputError, match="truncated.pt is truncated or corrupt"):
        load_checkpoint(truncated)


def test_text_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(InvalidInputError, match="notes.pt is not a torch.save zip archive"):
        load_checkpoint(text)


def test_directory(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a file"):
        load_checkpoint(tmp_path)


def test_foreign_torch_file(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 1}, foreign)
    with pytest.raises(
        InvalidInputError, match="foreign.pt is not a stn-serve checkpoint: expected format"
    ):
        load_checkpoint(foreign)


def test_bare_tensor_file(tmp_path):
    foreign = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(InvalidInputError, match="found 'Tensor'"):
        load_checkpoint(foreign)


class _Payload:
    """Unpickling this would create the marker file: weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": FORMAT, "model_config": _Payload(marker)}, hostile)
    with pytest.raises(InvalidInputError, match="holds objects other than plain types and tensors"):
        load_checkpoint(hostile)
    assert not marker.exists()


def test_missing_entries_and_bad_config(saved, tmp_path):
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({key: value for key, value in payload.items() if key != "labels"}, partial)
    with pytest.raises(InvalidInputError, match="lacks entries \\['labels'\\]"):
        load_checkpoint(partial)
    bad = tmp_path / "bad_config.pt"
    torch.save({**payload, "model_config": {**payload["model_config"], "arch": "resnet"}}, bad)
    with pytest.raises(
        InvalidInputError, match="bad_config.pt: bad model_config: .*arch must be one of"
    ):
        load_checkpoint(bad)


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    wider = tmp_path / "wider.pt"
    torch.save({**payload, "model_config": {**payload["model_config"], "width": 8}}, wider)
    with pytest.raises(InvalidInputError, match="weights do not fit its model config"):
        load_checkpoint(wider).build_model()


def test_save_rejects_wrong_label_count(tmp_path):
    config = ModelConfig()
    with pytest.raises(InvalidInputError, match="needs 10 labels"):
        save_checkpoint(tmp_path / "x.pt", build_model(config), config, ["a", "b"])
