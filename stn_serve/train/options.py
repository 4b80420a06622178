"""Command-line flags for training settings, shared by `stn-serve train` and `stn-serve bench accuracy`.

Parsers only (argparse and the stdlib `TrainConfig`): building them never imports torch.
Defaults come from `TrainConfig`, so the flags and the library cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses

from stn_serve.contract import DATA_SOURCES, DEVICES, DISTORTIONS, PADDING_MODES, TRANSFORMS
from stn_serve.train.config import OPTIMIZERS, SCHEDULES, TrainConfig
from stn_serve.train.presets import AUTO, PRESET_CHOICES, preset_values, resolve_preset

DEFAULTS = TrainConfig()


def size_pair(text: str) -> tuple[int, int]:
    """ "28" -> (28, 28); "32x48" -> (32, 48)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH or SIZE, e.g. 28x28, got {text!r}"
        ) from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive HEIGHTxWIDTH or SIZE, got {text!r}")
    return (parts[0], parts[-1])


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --data-dir, --distortion, image size and sample limits."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        type=str,
        choices=DATA_SOURCES,
        default=DEFAULTS.data,
        help="image source: digits (embedded), fashion-mnist and mnist (IDX files), folder (one "
        "sub-folder per class in --data-dir)",
    )
    group.add_argument(
        "--data-dir",
        type=str,
        default=DEFAULTS.data_dir,
        help="folder holding the source's files (None: the source's default)",
    )
    group.add_argument(
        "--distortion",
        type=str,
        choices=DISTORTIONS,
        default=DEFAULTS.distortion,
        help="distortion of the STN paper; training images get fresh distortions every epoch",
    )
    group.add_argument(
        "--image-size",
        type=size_pair,
        default=DEFAULTS.image_size,
        metavar="HxW",
        help="resize source images before distortion (None: as the source gives them)",
    )
    group.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=DEFAULTS.channels,
        help="image channels (None: the source's own)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS.val_fraction,
        help="share of the training images held out for per-epoch validation",
    )
    group.add_argument(
        "--max-train-samples",
        type=int,
        default=DEFAULTS.max_train_samples,
        metavar="N",
        help="use only the first N training images, for quick runs (None: all)",
    )
    group.add_argument(
        "--max-test-samples",
        type=int,
        default=DEFAULTS.max_test_samples,
        metavar="N",
        help="use only the first N test images (None: all)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Transformer and network size flags."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--transform",
        type=str,
        choices=TRANSFORMS,
        default=DEFAULTS.transform,
        help="transform family of the spatial transformer",
    )
    group.add_argument(
        "--crop-size",
        type=size_pair,
        default=DEFAULTS.crop_size,
        metavar="HxW",
        help="size of the transformer's output (None: the source's undistorted size)",
    )
    group.add_argument(
        "--padding-mode",
        type=str,
        choices=PADDING_MODES,
        default=DEFAULTS.padding_mode,
        help="what the sampler reads outside the image",
    )
    group.add_argument(
        "--align-corners",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.align_corners,
        help="grid convention of grid generator and sampler",
    )
    group.add_argument(
        "--width",
        type=int,
        default=DEFAULTS.width,
        help="channels of the classifier's first conv block (doubling per block)",
    )
    group.add_argument(
        "--depth", type=int, default=DEFAULTS.depth, help="conv blocks of the classifier"
    )
    group.add_argument(
        "--hidden", type=int, default=DEFAULTS.hidden, help="hidden units of the classifier"
    )
    group.add_argument(
        "--loc-width",
        type=int,
        default=DEFAULTS.loc_width,
        help="channels of the localisation net's conv layers",
    )
    group.add_argument(
        "--loc-depth",
        type=int,
        default=DEFAULTS.loc_depth,
        help="conv blocks of the localisation net",
    )
    group.add_argument(
        "--loc-hidden",
        type=int,
        default=DEFAULTS.loc_hidden,
        help="hidden units of the localisation net",
    )
    group.add_argument(
        "--dropout",
        type=float,
        default=DEFAULTS.dropout,
        help="dropout before the classifier's last layer",
    )


def add_optimisation_arguments(parser: argparse.ArgumentParser) -> None:
    """Epochs, batch size, learning rates, schedule, seed and device."""
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--preset",
        type=str,
        choices=PRESET_CHOICES,
        default=AUTO,
        help="settings per data source for the flags left out (auto: the one named after "
        "--data, else default); see stn_serve/train/presets.py",
    )
    group.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs (None: the preset's, else {DEFAULTS.epochs})",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per batch and process (None: the preset's, else {DEFAULTS.batch_size})",
    )
    group.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak learning rate")
    group.add_argument(
        "--schedule",
        type=str,
        choices=SCHEDULES,
        default=DEFAULTS.schedule,
        help="learning-rate schedule over all steps (step: x0.1 at 50%% and 75%%)",
    )
    group.add_argument(
        "--loc-lr-mult",
        type=float,
        default=DEFAULTS.loc_lr_mult,
        help="learning-rate multiplier of the localisation net",
    )
    group.add_argument(
        "--weight-decay", type=float, default=DEFAULTS.weight_decay, help="weight decay"
    )
    group.add_argument(
        "--warmup-epochs",
        type=int,
        default=DEFAULTS.warmup_epochs,
        help="epochs over which the learning rate rises linearly from 0 before the schedule",
    )
    group.add_argument(
        "--pose-weight",
        type=float,
        default=DEFAULTS.pose_weight,
        help="weight of the pose-consistency loss that makes crops canonical (0: off; distortion "
        "none: always off)",
    )
    group.add_argument(
        "--optimizer",
        type=str,
        choices=OPTIMIZERS,
        default=DEFAULTS.optimizer,
        help="optimiser (sgd: Nesterov momentum 0.9)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="seed of initialisation, batch order and training distortions",
    )
    group.add_argument(
        "--device",
        type=str,
        choices=DEVICES,
        default=DEFAULTS.device,
        help="where to train (auto: CUDA when available)",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.progress,
        help="show a progress bar per epoch",
    )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of `training_parents()`, added to an existing parser (bench sub-commands)."""
    add_data_arguments(parser)
    add_model_arguments(parser)
    add_optimisation_arguments(parser)


def training_parents() -> list[argparse.ArgumentParser]:
    """One parent parser holding the data, model and optimisation flags."""
    parent = argparse.ArgumentParser(add_help=False)
    add_training_arguments(parent)
    return [parent]


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """A TrainConfig from the parsed flags of `training_parents()` (and any extra fields given).

    Flags a preset may set and that were left out (None) take the preset's value, else
    TrainConfig's default; `preset` records the preset's resolved name.
    """
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {name: value for name, value in vars(args).items() if name in fields}
    values.update(overrides)
    data = values.get("data", DEFAULTS.data)
    preset = resolve_preset(values.get("preset", AUTO), data)
    for name, value in preset_values(preset, data).items():
        if values.get(name) is None:
            values[name] = value
    # Still None: left to TrainConfig's default.
    for name in [name for name, value in values.items() if value is None]:
        if getattr(DEFAULTS, name) is not None:
            del values[name]
    return TrainConfig(**{**values, "preset": preset})
