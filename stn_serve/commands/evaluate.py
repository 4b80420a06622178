"""`stn-serve evaluate CHECKPOINT`: test accuracy and canonical pose spread of a trained model."""

from __future__ import annotations

import json

from stn_serve.commands.formatting import HelpFormatter
from stn_serve.contract import DEVICES, DISTORTIONS


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "evaluate",
        parents=parents,
        help="score a checkpoint on its test set and measure how canonical its crops are",
        description="Rebuild the checkpoint's test set from its training settings (same images, "
        "same distortion seed), print the test accuracy and the spread of the pose its crops "
        "end up in beside the spread of the distortion alone.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", type=str, help="checkpoint file (best.pt or last.pt)"
    )
    parser.add_argument(
        "--distortion",
        type=str,
        choices=DISTORTIONS,
        default=None,
        help="distortion of the test images (None: the checkpoint's)",
    )
    parser.add_argument(
        "--data-dir", type=str, default=None, help="source folder (None: the checkpoint's)"
    )
    parser.add_argument(
        "--max-test-samples",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N test images (None: the checkpoint's limit)",
    )
    parser.add_argument(
        "--device",
        type=str,
        choices=DEVICES,
        default="auto",
        help="where to run the model (auto: CUDA when available)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object instead"
    )
    return parser


def run(args) -> int:
    from stn_serve.train.canonical import format_spread
    from stn_serve.train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        distortion=args.distortion,
        data_dir=args.data_dir,
        max_test_samples=args.max_test_samples,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{result['checkpoint']}: test accuracy {result['test_accuracy']:.2%} "
        f"(loss {result['test_loss']:.4f}) on {result['test_count']} "
        f"{result['data']} / {result['distortion']} test images"
    )
    print(format_spread(result["pose_spread"]))
    return 0
