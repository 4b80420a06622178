"""`stn-serve demo`: train → export → serve → query on the embedded digits (see `stn_serve.demo`)."""

from __future__ import annotations

from pathlib import Path

from stn_serve.commands.formatting import HelpFormatter
from stn_serve.train.options import DEFAULTS


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "demo",
        parents=parents,
        help="train, export, serve and query a model on the embedded digits, end to end",
        description="Train a small ST-CNN on RTS-distorted digits, export it to the model "
        "repository, serve it over gRPC, query it with the project's client and tritonclient, "
        "draw the inputs beside the served crops, and stop the server.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="folder for the run's files"
    )
    parser.add_argument(
        "--repository", type=Path, default=Path("export"), help="model repository to export into"
    )
    parser.add_argument(
        "--epochs", type=int, default=DEFAULTS.epochs, help="training epochs (the training default)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds' version for tests: 1 epoch on 256 training images",
    )
    return parser


def run(args) -> int:
    from stn_serve.demo import DemoSettings, run_demo

    run_demo(
        DemoSettings(
            out_dir=args.out,
            repository=args.repository,
            epochs=1 if args.quick else args.epochs,
            max_train_samples=256 if args.quick else None,
            progress=not args.quick,
        )
    )
    return 0
