"""`stn-serve visualize CHECKPOINT`: test inputs beside the transformer's canonicalised crops."""

from __future__ import annotations

from stn_serve.commands.formatting import HelpFormatter
from stn_serve.contract import DATA_SOURCES, DISTORTIONS


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "visualize",
        parents=parents,
        help="draw test inputs next to their spatial-transformer crops",
        description="Draw a grid of test images (top) and the checkpoint's crops of them (bottom). "
        "Data settings default to those the checkpoint was trained with.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", type=str, help="checkpoint file (best.pt or last.pt)"
    )
    parser.add_argument(
        "--out", type=str, default=None, help="PNG to write (None: crops.png beside the checkpoint)"
    )
    parser.add_argument("--count", type=int, default=16, help="number of test images to show")
    parser.add_argument(
        "--data",
        type=str,
        choices=DATA_SOURCES,
        default=None,
        help="image source (None: the checkpoint's)",
    )
    parser.add_argument(
        "--data-dir", type=str, default=None, help="source folder (None: the checkpoint's)"
    )
    parser.add_argument(
        "--distortion",
        type=str,
        choices=DISTORTIONS,
        default=None,
        help="distortion (None: the checkpoint's)",
    )
    return parser


def run(args) -> int:
    from stn_serve.train.visualize import visualize_checkpoint

    path = visualize_checkpoint(
        args.checkpoint,
        out=args.out,
        count=args.count,
        data=args.data,
        data_dir=args.data_dir,
        distortion=args.distortion,
    )
    print(path)
    return 0
