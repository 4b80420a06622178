"""`stn-serve train`: train an ST-CNN or the CNN baseline (also under `torchrun`)."""

from __future__ import annotations

import argparse

from stn_serve.models.config import ARCHS
from stn_serve.train.options import DEFAULTS, training_parents


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "train",
        parents=[*parents, *training_parents()],
        help="train a spatial-transformer classifier or the plain CNN baseline",
        description="Train a model and write best.pt, last.pt, metrics.jsonl, curves.png and crops.png "
        "to --out. Run under `torchrun --nproc-per-node N -m stn_serve train ...` for "
        "data-parallel training.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--arch",
        type=str,
        choices=ARCHS,
        default=DEFAULTS.arch,
        help="stcnn: spatial transformer then CNN; cnn: the plain CNN baseline",
    )
    run_group.add_argument(
        "--match-params",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.match_params,
        help="for --arch cnn, size the baseline to the ST-CNN's parameter count",
    )
    run_group.add_argument(
        "--out",
        dest="out_dir",
        type=str,
        default=DEFAULTS.out_dir,
        help="output folder for checkpoints, metrics.jsonl and plots",
    )
    run_group.add_argument(
        "--resume",
        type=str,
        default=DEFAULTS.resume,
        metavar="CHECKPOINT",
        help="continue from this last.pt up to --epochs (None: start afresh)",
    )
    run_group.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.plots,
        help="write curves.png and crops.png at the end",
    )
    return parser


def run(args) -> int:
    from stn_serve.train import fit
    from stn_serve.train.options import config_from_args

    result = fit(config_from_args(args))
    if result.rank != 0:
        return 0
    metrics = result.metrics
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} (best epoch {metrics['best_epoch']}, "
        f"val accuracy {metrics['best_val_accuracy']:.4f}); checkpoints: {result.best_checkpoint}, "
        f"{result.last_checkpoint}"
    )
    return 0
