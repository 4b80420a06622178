"""Checkpoints: one `torch.save`d dict of plain types and tensors (see docs/contracts.md).

Reading uses `torch.load(weights_only=True)`, so a checkpoint can never run code on load, and
every way a file can be wrong (missing, truncated, another program's file) becomes a
NotFoundError or InvalidInputError that names the file.
"""

from __future__ import annotations

import os
import pickle
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from stn_serve.errors import InvalidInputError, NotFoundError
from stn_serve.models import ModelConfig, build_model

FORMAT = "stn-serve-checkpoint/1"
# torch.save has written zip archives since torch 1.6; anything else is not ours.
ZIP_MAGIC = b"PK\x03\x04"
REQUIRED_KEYS = (
    "format",
    "model_config",
    "state_dict",
    "labels",
    "input_shape",
    "normalisation",
    "optimizer",
    "scheduler",
    "epoch",
    "metrics",
    "versions",
)


@dataclass
class Checkpoint:
    """A checkpoint as read back from disk.

    Attributes:
        path: the file it was read from.
        model_config: the architecture; `build_model()` rebuilds the trained network.
        state_dict: the weights.
        labels: class names, index i names logit i.
        input_shape: [C, H, W] the model takes.
        normalisation: {"mean": [C floats], "std": [C floats]}, applied inside the model.
        optimizer, scheduler: their `state_dict()`s, or None (for resuming training).
        epoch: number of epochs trained.
        metrics: figures at save time (e.g. val_accuracy, test_accuracy).
        versions: package versions that wrote it.
        train_config: the training settings that produced it (a dict), or None.
    """

    path: Path
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    labels: list[str]
    input_shape: list[int]
    normalisation: dict[str, list[float]]
    optimizer: dict | None
    scheduler: dict | None
    epoch: int
    metrics: dict
    versions: dict[str, str]
    train_config: dict | None = field(default=None)

    def build_model(self) -> nn.Module:
        """The trained model, in eval mode, on the CPU."""
        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as error:
            raise InvalidInputError(
                f"checkpoint {self.path}: weights do not fit its model config: {error}"
            ) from None
        return model.eval()


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint's contents."""
    import numpy

    import stn_serve

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {
        "stn_serve": stn_serve.__version__,
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig,
    labels: list[str],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    epoch: int = 0,
    metrics: dict | None = None,
    train_config: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (a temporary file, then a rename) and return its path.

    Args:
        path: destination file; its folder is created.
        model: the network (a DistributedDataParallel wrapper is unwrapped).
        config: the ModelConfig that built `model`.
        labels: class names, one per logit.
        optimizer, scheduler: saved for resuming when given.
        epoch: number of epochs trained.
        metrics: plain figures to keep with the weights.
        train_config: plain dict of the training settings.
    """
    if len(labels) != config.num_classes:
        raise InvalidInputError(
            f"checkpoint needs {config.num_classes} labels (one per class), got {len(labels)}"
        )
    network = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    payload = {
        "format": FORMAT,
        "model_config": config.to_dict(),
        "state_dict": {key: value.detach().cpu() for key, value in network.state_dict().items()},
        "labels": [str(label) for label in labels],
        "input_shape": [config.in_channels, *config.input_size],
        "normalisation": {"mean": list(config.mean), "std": list(config.std)},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "versions": package_versions(),
        "train_config": train_config,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint written by `save_checkpoint`; tensors land on the CPU.

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: it is not a readable stn-serve checkpoint (truncated, another
            format, foreign objects, missing or malformed entries).
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise InvalidInputError(f"checkpoint {path} is not a file")
    with path.open("rb") as handle:
        magic = handle.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:
        raise InvalidInputError(
            f"checkpoint {path} is not a torch.save zip archive (starts with {magic!r})"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InvalidInputError(
            f"checkpoint {path} holds objects other than plain types and tensors, or is not a torch file"
            f" ({_unpickling_reason(error)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        first_sentence = str(error).split(". ")[0]
        raise InvalidInputError(
            f"checkpoint {path} is truncated or corrupt: {first_sentence}"
        ) from None
    return _checked(path, payload)


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if "WeightsUnpickler error" in line]
    return (reasons or lines or ["unreadable pickle"])[0]


def _checked(path: Path, payload) -> Checkpoint:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InvalidInputError(
            f"{path} is not a stn-serve checkpoint: expected format {FORMAT!r}, found {found!r}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise InvalidInputError(f"checkpoint {path} lacks entries {missing}")
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (InvalidInputError, TypeError) as error:
        raise InvalidInputError(f"checkpoint {path}: bad model_config: {error}") from None
    labels = payload["labels"]
    if not isinstance(labels, list) or len(labels) != config.num_classes:
        raise InvalidInputError(
            f"checkpoint {path}: expected {config.num_classes} labels, found {labels!r}"
        )
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise InvalidInputError(f"checkpoint {path}: state_dict must map names to tensors")
    return Checkpoint(
        path=path,
        model_config=config,
        state_dict=state_dict,
        labels=labels,
        input_shape=list(payload["input_shape"]),
        normalisation=payload["normalisation"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        epoch=int(payload["epoch"]),
        metrics=payload["metrics"],
        versions=payload["versions"],
        train_config=payload.get("train_config"),
    )
