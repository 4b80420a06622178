"""`TrainConfig` (every training setting, with its default) and `TrainResult`.

Stdlib only: the command-line parsers read their defaults from here without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

SCHEDULES = ("cosine", "step", "none")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """Settings of one training run; `stn-serve train` has one flag per field.

    The defaults train the embedded digits under RTS to about 97.5 % test accuracy in about 40 s
    on two CPU cores, with crops whose rotation spread is under a third of the distortion's; the
    sweep that chose them is in docs/training.md.

    Data:
        data: image source name (`stn_serve.data.SOURCES`).
        data_dir: where the source's files are (None: the source's default).
        image_size: resize the source's images to (H, W) before distortion (None: as they are).
        channels: 1 or 3 (None: the source's own).
        distortion: one of `stn_serve.data.DISTORTIONS`; training images are re-distorted every
            epoch, validation and test images once with fixed seeds.
        val_fraction: share of the training images held out for per-epoch validation.
        max_train_samples, max_test_samples: use only the first N images (None: all).
    Model (see `stn_serve.models.ModelConfig`):
        arch, transform, crop_size, padding_mode, align_corners, width, depth, hidden,
        loc_width, loc_depth, loc_hidden, dropout.
        crop_size None means the source's undistorted size (28×28 for digits under RTS's 42×42
            canvas): the crop then shows the object at the scale it was drawn at.
        match_params: for arch "cnn", size width and hidden so the baseline has about the
            parameter count of the ST-CNN these settings describe.
    Optimisation:
        epochs, batch_size (per process), lr, schedule (cosine | step: x0.1 at 50 % and 75 % of
        the steps | none), loc_lr_mult (learning-rate multiplier of the localisation net),
        weight_decay, optimizer (adamw | sgd with Nesterov momentum 0.9), seed.
        warmup_epochs: the learning rate rises linearly from 0 over these epochs first.
        pose_weight: weight of the pose-consistency loss (`stn_serve.train.losses`); ignored for
            distortion "none", whose poses are unknown.
    Run:
        preset: the name of the preset (`stn_serve.train.presets`) the settings came from, for
            logs; the preset's values are put in by the command-line layer.
        out_dir: where checkpoints, metrics.jsonl and plots go.
        resume: a checkpoint to continue from (its model config wins over the model settings).
        device: auto (CUDA when available) | cpu | cuda.
        progress: show a progress bar per epoch.
        plots: write curves.png and crops.png at the end.
    """

    data: str = "digits"
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    distortion: str = "RTS"
    val_fraction: float = 0.1
    max_train_samples: int | None = None
    max_test_samples: int | None = None

    arch: str = "stcnn"
    transform: str = "affine"
    crop_size: tuple[int, int] | None = None
    padding_mode: str = "zeros"
    align_corners: bool = False
    width: int = 16
    depth: int = 3
    hidden: int = 128
    loc_width: int = 16
    loc_depth: int = 2
    loc_hidden: int = 32
    dropout: float = 0.0
    match_params: bool = True

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    schedule: str = "cosine"
    loc_lr_mult: float = 2.0
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    seed: int = 0
    warmup_epochs: int = 0
    pose_weight: float = 10.0

    preset: str = "default"
    out_dir: str = "runs/train"
    resume: str | None = None
    device: str = "auto"
    progress: bool = True
    plots: bool = True

    def to_dict(self) -> dict:
        """Plain types only (for checkpoints and logs)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class TrainResult:
    """What `fit` produced.

    Attributes:
        out_dir: the run's folder.
        best_checkpoint: best.pt (highest validation accuracy), with test metrics added.
        last_checkpoint: last.pt (the final epoch, for resuming).
        metrics: final figures: test_accuracy, test_loss, best_val_accuracy, best_epoch,
            epochs, parameters, train_seconds.
        history: one dict per epoch, as appended to metrics.jsonl.
        plots: paths of the PNGs written.
        rank: the process's rank under torchrun (0 alone); only rank 0 wrote files.
    """

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    rank: int = 0
