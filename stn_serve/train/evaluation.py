"""`evaluate_checkpoint`: score a checkpoint on its run's test set, and say how canonical its crops are.

The test set is rebuilt from the training settings the checkpoint carries (source, size,
channels, sample limit, distortion and its fixed seed), so the accuracy is the one training
reported for the same weights; the distortion, source folder and sample limit may be changed.
"""

from __future__ import annotations

import dataclasses
import os

from stn_serve.errors import InvalidInputError
from stn_serve.train.canonical import canonical_spread
from stn_serve.train.checkpoint import Checkpoint, load_checkpoint
from stn_serve.train.config import TrainConfig
from stn_serve.train.datasets import load_test_set
from stn_serve.train.distributed import Context, resolve_device
from stn_serve.train.loop import evaluate
from stn_serve.train.trainer import MIN_EVAL_BATCH


def trained_config(checkpoint: Checkpoint, **changes) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, with `changes` applied where not None.

    Settings this version does not know are passed over; ones the checkpoint lacks take their
    defaults.
    """
    if not checkpoint.train_config:
        raise InvalidInputError(
            f"checkpoint {checkpoint.path} does not say what data it was trained on "
            "(it has no training settings)"
        )
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {name: value for name, value in checkpoint.train_config.items() if name in known}
    values.update({name: value for name, value in changes.items() if value is not None})
    for name in ("image_size", "crop_size"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    return TrainConfig(**values)


def evaluate_checkpoint(
    path: str | os.PathLike,
    distortion: str | None = None,
    data_dir: str | None = None,
    max_test_samples: int | None = None,
    device: str = "auto",
) -> dict:
    """Test figures of the checkpoint at `path`.

    Args:
        path: a checkpoint written by training (best.pt or last.pt).
        distortion, data_dir, max_test_samples: override the checkpoint's own (None: keep).
        device: auto (CUDA when available) | cpu | cuda.

    Returns:
        {"checkpoint", "data", "distortion", "test_count", "test_accuracy", "test_loss",
        "pose_spread"}; pose_spread is `canonical_spread`'s {"model": ..., "distortion": ...}
        ("model" absent for the CNN baseline).

    Raises:
        NotFoundError: the checkpoint or the data files do not exist.
        InvalidInputError: an unreadable checkpoint, one without training settings, or test
            images of another shape than the model takes.
    """
    checkpoint = load_checkpoint(path)
    config = trained_config(
        checkpoint, distortion=distortion, data_dir=data_dir, max_test_samples=max_test_samples
    )
    test = load_test_set(config)
    if list(test.image_shape) != list(checkpoint.input_shape):
        raise InvalidInputError(
            f"checkpoint {checkpoint.path} takes images {checkpoint.input_shape}, the data gives "
            f"{list(test.image_shape)}: check --distortion"
        )
    context = Context(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    model = checkpoint.build_model().to(context.device)
    batch = max(config.batch_size, MIN_EVAL_BATCH)
    figures = evaluate(model, test.images, test.labels, batch, context)
    return {
        "checkpoint": str(checkpoint.path),
        "data": config.data,
        "distortion": config.distortion,
        "test_count": len(test),
        "test_accuracy": figures["accuracy"],
        "test_loss": figures["loss"],
        "pose_spread": canonical_spread(model, test.images, test.poses, test.source_size, batch),
    }
