"""`stn-serve batch`: run a folder or glob of images through a served or local model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stn_serve.commands.connection import client_options, remote_predictor
from stn_serve.contract import DEVICES

FAILURES_SHOWN = 20


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "batch",
        parents=[*parents, client_options()],
        help="predict a folder of images; write predictions.jsonl, failures.jsonl and crops",
        description="Run every image under INPUT through a model, on a running server (--server) "
        "or in this process on ONNX Runtime (--repository). Writes OUT/predictions.jsonl (file, "
        "top-k, theta, crop), OUT/crops/*.png and OUT/failures.jsonl. Images already in "
        "predictions.jsonl are skipped, so a rerun resumes. Exit code 1 when any image failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="a folder (searched recursively) or a glob pattern (quote it)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--server",
        type=str,
        default=None,
        help="predict on this server (HOST:PORT or dns:///HOST:PORT)",
    )
    source.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="predict in this process with a model from this repository "
        "(needs --model when it holds several)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="ONNX Runtime device with --repository",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=32, help="images read and predicted at a time"
    )
    parser.add_argument("--no-crops", action="store_true", help="do not write crops/*.png")
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    return parser


def make_predictor(args):
    """The remote or local predictor the arguments ask for."""
    if args.server:
        return remote_predictor(args)
    from stn_serve.batch import LocalPredictor
    from stn_serve.runtime import ModelRepository, RuntimeOptions

    repository = ModelRepository(args.repository, RuntimeOptions(device=args.device)).load()
    return LocalPredictor(repository.get(args.model, args.version), args.top_k)


def run(args) -> int:
    from stn_serve.batch import iter_inputs, run_batch

    predictor = make_predictor(args)
    try:
        summary = run_batch(
            iter_inputs(args.input),
            predictor,
            args.out,
            chunk_size=args.chunk_size,
            save_crops=not args.no_crops,
            progress={"auto": None, "on": True, "off": False}[args.progress],
        )
    finally:
        predictor.close()
    print(
        f"{summary.predicted} predicted, {summary.skipped} skipped as already done, "
        f"{len(summary.failures)} failed; results in {args.out}"
    )
    if summary.failures:
        print(f"failed images (all listed in {args.out / 'failures.jsonl'}):", file=sys.stderr)
        for failure in summary.failures[:FAILURES_SHOWN]:
            print(f"  {failure.file}: {failure.error}", file=sys.stderr)
        if len(summary.failures) > FAILURES_SHOWN:
            print(f"  ... and {len(summary.failures) - FAILURES_SHOWN} more", file=sys.stderr)
        return 1
    return 0
