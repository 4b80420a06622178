"""`fit(TrainConfig) -> TrainResult`: the whole training run, single-process or under torchrun.

Every process trains on its shard of each batch (DistributedDataParallel); only rank 0 writes
files (checkpoints, metrics.jsonl, plots) and shows progress.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

import torch
from torch import nn

from stn_serve.data import make_loader, set_epoch
from stn_serve.errors import InvalidInputError
from stn_serve.models import ModelConfig, build_model, count_parameters, matched_baseline_config
from stn_serve.train import distributed
from stn_serve.train.canonical import canonical_spread, format_spread
from stn_serve.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from stn_serve.train.config import TrainConfig, TrainResult
from stn_serve.train.datasets import RunData, channel_stats, load_run_data
from stn_serve.train.history import append_metrics, truncate_metrics
from stn_serve.train.loop import evaluate, train_epoch
from stn_serve.train.optim import make_optimizer, make_scheduler
from stn_serve.train.plots import plot_crops, plot_curves
from stn_serve.train.presets import describe, preset_values

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"
CURVES, CROPS = "curves.png", "crops.png"
#: Test images shown in crops.png.
CROPS_SHOWN = 16
#: Evaluation needs no gradients, so it can take larger batches than training.
MIN_EVAL_BATCH = 256


def model_config_for(
    config: TrainConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    mean: list[float],
    std: list[float],
    source_size: tuple[int, int] | None = None,
) -> ModelConfig:
    """The ModelConfig `config` describes for images of (C, H, W) and `num_classes` classes.

    `source_size` (the undistorted images' (h, w)) is the crop size where `config` names none;
    without it, the input size.
    """
    channels, height, width = image_shape
    # TrainConfig repeats the architecture fields of ModelConfig under the same names.
    shared = {field.name for field in dataclasses.fields(ModelConfig)} & {
        field.name for field in dataclasses.fields(TrainConfig)
    } - {"crop_size"}
    stcnn = ModelConfig(
        **{name: getattr(config, name) for name in shared - {"arch"}},
        arch="stcnn",
        crop_size=config.crop_size if config.crop_size is not None else source_size,
        in_channels=channels,
        input_size=(height, width),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
    )
    if config.arch == "stcnn":
        return stcnn
    if config.arch != "cnn":
        raise InvalidInputError(f"arch must be stcnn or cnn, got {config.arch!r}")
    return matched_baseline_config(stcnn) if config.match_params else stcnn.replace(arch="cnn")


def _check(config: TrainConfig) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise InvalidInputError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.warmup_epochs < config.epochs:
        raise InvalidInputError(
            f"warmup_epochs must be in [0, epochs), got {config.warmup_epochs} of {config.epochs}"
        )
    if not config.pose_weight >= 0:
        raise InvalidInputError(f"pose_weight must be >= 0, got {config.pose_weight}")


def _check_resumable(checkpoint: Checkpoint, data: RunData) -> None:
    if list(checkpoint.input_shape) != list(data.image_shape) or checkpoint.labels != data.classes:
        raise InvalidInputError(
            f"cannot resume from {checkpoint.path}: it takes {checkpoint.input_shape} images with labels "
            f"{checkpoint.labels}, the data gives {list(data.image_shape)} with {data.classes}"
        )
    if checkpoint.optimizer is None or checkpoint.scheduler is None:
        raise InvalidInputError(
            f"cannot resume from {checkpoint.path}: it has no optimizer state (use last.pt)"
        )


def fit(config: TrainConfig) -> TrainResult:
    """Train, validate every epoch, keep best.pt and last.pt, score best.pt on the test set."""
    _check(config)
    context = distributed.start(config.device)
    try:
        return _fit(config, context)
    finally:
        distributed.stop(context)


@dataclasses.dataclass
class _Best:
    """The epoch with the highest validation accuracy so far, and its weights."""

    accuracy: float
    epoch: int
    state: dict[str, torch.Tensor]

    def offer(self, accuracy: float, epoch: int, model: nn.Module) -> bool:
        """Keep `model`'s weights if `accuracy` beats the best; True if it did."""
        if accuracy <= self.accuracy:
            return False
        self.accuracy, self.epoch, self.state = accuracy, epoch, copy.deepcopy(model.state_dict())
        return True


def _build_model(
    config: TrainConfig, data: RunData, resumed: Checkpoint | None
) -> tuple[ModelConfig, nn.Module]:
    """A fresh model for `config`, or the resumed checkpoint's model with its weights."""
    if resumed is None:
        mean, std = channel_stats(data.train.images)
        model_config = model_config_for(
            config, data.image_shape, len(data.classes), mean, std, data.source_size
        )
        return model_config, build_model(model_config)
    _check_resumable(resumed, data)
    return resumed.model_config, resumed.build_model()


def _restore(resumed: Checkpoint, optimizer, scheduler, model: nn.Module) -> tuple[int, _Best]:
    """Load optimiser and scheduler state; returns the epochs done and the best so far."""
    optimizer.load_state_dict(resumed.optimizer)
    scheduler.load_state_dict(resumed.scheduler)
    best_file = Path(resumed.path).with_name(BEST)
    best_state = (
        load_checkpoint(best_file).state_dict
        if best_file.exists()
        else copy.deepcopy(model.state_dict())  # the live weights change as training goes on
    )
    best = _Best(
        resumed.metrics.get("best_val_accuracy", -1.0),
        resumed.metrics.get("best_epoch", resumed.epoch),
        best_state,
    )
    return resumed.epoch, best


def _fit(config: TrainConfig, context: distributed.Context) -> TrainResult:
    out_dir = Path(config.out_dir)
    torch.manual_seed(config.seed)
    data = load_run_data(config)
    resumed = load_checkpoint(config.resume) if config.resume else None
    model_config, model = _build_model(config, data, resumed)
    model.to(context.device)
    parameters = count_parameters(model)

    loader = make_loader(
        data.train,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        distributed=context.distributed,
    )
    optimizer = make_optimizer(
        model, config.optimizer, config.lr, config.loc_lr_mult, config.weight_decay
    )
    scheduler = make_scheduler(
        optimizer,
        config.schedule,
        config.epochs * len(loader),
        config.warmup_epochs * len(loader),
    )
    if resumed is None:
        start_epoch, best = 0, _Best(-1.0, 0, copy.deepcopy(model.state_dict()))
    else:
        start_epoch, best = _restore(resumed, optimizer, scheduler, model)
    network = model
    if context.distributed:
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    history: list[dict] = []
    if context.is_main:
        log.info("%s", describe(config.preset, preset_values(config.preset, config.data)))
        out_dir.mkdir(parents=True, exist_ok=True)
        history = truncate_metrics(out_dir, start_epoch)
        log.info(
            "training %s (%d parameters) on %s/%s, %d train / %d val / %d test images, %d process(es)",
            model_config.arch,
            parameters,
            config.data,
            config.distortion,
            len(data.train),
            len(data.val),
            len(data.test),
            context.world_size,
        )
    save = {"config": model_config, "labels": data.classes, "train_config": config.to_dict()}
    eval_batch = max(config.batch_size, MIN_EVAL_BATCH)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        set_epoch(loader, epoch - 1)
        train = train_epoch(
            network,
            loader,
            optimizer,
            scheduler,
            context,
            f"epoch {epoch}/{config.epochs}",
            config.progress,
            pose_weight=config.pose_weight if config.distortion != "none" else 0.0,
        )
        val = evaluate(model, data.val.images, data.val.labels, eval_batch, context)
        improved = best.offer(val["accuracy"], epoch, model)
        record = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        if not context.is_main:
            continue
        append_metrics(out_dir, record)
        history.append(record)
        status = {**record, "best_val_accuracy": best.accuracy, "best_epoch": best.epoch}
        save_checkpoint(
            out_dir / LAST,
            model,
            optimizer=optimizer,
            scheduler=scheduler,
            epoch=epoch,
            metrics=status,
            **save,
        )
        if improved:
            save_checkpoint(out_dir / BEST, model, epoch=epoch, metrics=status, **save)
        log.info(
            "epoch %d/%d: train loss %.4f acc %.4f, val loss %.4f acc %.4f (%.1f s)",
            epoch,
            config.epochs,
            train["loss"],
            train["accuracy"],
            val["loss"],
            val["accuracy"],
            record["seconds"],
        )

    model.load_state_dict(best.state)
    test = evaluate(model, data.test.images, data.test.labels, eval_batch, context)
    spreads = canonical_spread(
        model, data.test.images, data.test.poses, data.source_size, eval_batch
    )
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "best_val_accuracy": best.accuracy,
        "best_epoch": best.epoch,
        "epochs": config.epochs,
        "parameters": parameters,
        "train_seconds": sum(record["seconds"] for record in history),
        "pose_spread": spreads,
    }
    plots: list[Path] = []
    if context.is_main:
        save_checkpoint(out_dir / BEST, model, epoch=best.epoch, metrics=metrics, **save)
        log.info(
            "best epoch %d: val accuracy %.4f, test accuracy %.4f",
            best.epoch,
            best.accuracy,
            test["accuracy"],
        )
        log.info("%s", format_spread(spreads))
        if config.plots:
            plots = _plot(history, model, data, out_dir)
    return TrainResult(
        out_dir=out_dir,
        best_checkpoint=out_dir / BEST,
        last_checkpoint=out_dir / LAST,
        metrics=metrics,
        history=history,
        plots=plots,
        rank=context.rank,
    )


def _plot(history: list[dict], model: nn.Module, data: RunData, out_dir: Path) -> list[Path]:
    """curves.png and crops.png (the first CROPS_SHOWN test images) in `out_dir`."""
    shown = slice(0, CROPS_SHOWN)
    crops = plot_crops(
        model,
        data.test.images[shown],
        data.test.labels[shown],
        data.classes,
        out_dir / CROPS,
    )
    return [plot_curves(history, out_dir / CURVES), crops]
