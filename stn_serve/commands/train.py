"""`stn-serve train`: train an ST-CNN or the CNN baseline (also under `torchrun`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stn_serve.commands.formatting import HelpFormatter
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
        formatter_class=HelpFormatter,
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
        default=None,
        help="output folder for checkpoints, metrics.jsonl and plots (None: the folder of "
        f"--resume's checkpoint, else {DEFAULTS.out_dir})",
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


def output_folder(args) -> str:
    """--out, else a resumed run's own folder (so its metrics.jsonl and best.pt continue), else
    the default."""
    if args.out_dir is not None:
        return args.out_dir
    return str(Path(args.resume).parent) if args.resume else DEFAULTS.out_dir


def run(args) -> int:
    from stn_serve.train import fit
    from stn_serve.train.canonical import format_spread
    from stn_serve.train.options import config_from_args

    result = fit(config_from_args(args, out_dir=output_folder(args)))
    if result.rank != 0:
        return 0
    metrics = result.metrics
    print(
        f"test accuracy {metrics['test_accuracy']:.2%} (best epoch {metrics['best_epoch']}, "
        f"val accuracy {metrics['best_val_accuracy']:.2%}); checkpoints: {result.best_checkpoint}, "
        f"{result.last_checkpoint}"
    )
    print(format_spread(metrics["pose_spread"]))
    if result.plots:
        print("plots: " + ", ".join(str(path) for path in result.plots))
    return 0
