"""`stn-serve batch`: run a folder or glob of images through a served or local model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stn_serve.commands.connection import client_options, remote_predictor
from stn_serve.commands.formatting import HelpFormatter
from stn_serve.contract import DEVICES
from stn_serve.errors import InvalidInputError

FAILURES_SHOWN = 20


def shard_argument(text: str):
    """argparse type of --shard: "INDEX/COUNT" -> Shard."""
    from stn_serve.batch.shards import Shard

    try:
        return Shard.parse(text)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "batch",
        parents=[*parents, client_options()],
        help="predict a folder of images; write predictions.jsonl, failures.jsonl and crops",
        description="Run every image under INPUT through a model, on a running server (--server) "
        "or in this process on ONNX Runtime (--repository). Writes OUT/predictions.jsonl (file, "
        "top-k, theta, crop), OUT/crops/*.png and OUT/failures.jsonl. Images already in "
        "predictions.jsonl are skipped, so a rerun resumes. Exit code 1 when any image failed.",
        formatter_class=HelpFormatter,
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
        "--shard",
        type=shard_argument,
        default=None,
        metavar="INDEX/COUNT",
        help="predict only shard INDEX (0-based) of COUNT: the files whose relative path hashes "
        "to it, so COUNT jobs with INDEX 0..COUNT-1 share the input without overlap; give each "
        "its own --out and join them with `stn-serve merge` (None: every file)",
    )
    parser.add_argument(
        "--follow-symlinks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="walk symlinked folders, each real folder once and none that lies inside INPUT",
    )
    parser.add_argument(
        "--sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="also draw the run's first predicted images beside their crops, with the top class "
        "and its probability, into this PNG",
    )
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
    from stn_serve.runtime import RuntimeOptions, open_version

    model = open_version(args.repository, args.model, args.version, RuntimeOptions(args.device))
    return LocalPredictor(model, args.top_k)


def report(summary, args, sheet: Path | None) -> int:
    """Print the run's summary and its first failures; the exit code."""
    from stn_serve.batch import printable

    print(
        f"{summary.predicted} predicted, {summary.skipped} skipped as already done, "
        f"{len(summary.failures)} failed; results in {args.out}"
    )
    if sheet is not None:
        print(f"contact sheet: {sheet}")
    elif args.sheet is not None:
        print("no contact sheet: this run predicted no image")
    if not summary.failures:
        return 0
    print(f"failed images (all listed in {args.out / 'failures.jsonl'}):", file=sys.stderr)
    for failure in summary.failures[:FAILURES_SHOWN]:
        print(f"  {printable(failure.file)}: {failure.error}", file=sys.stderr)
    if len(summary.failures) > FAILURES_SHOWN:
        print(f"  ... and {len(summary.failures) - FAILURES_SHOWN} more", file=sys.stderr)
    return 1


def run(args) -> int:
    from stn_serve.batch import SheetCollector, iter_inputs, printable, run_batch

    inputs = iter_inputs(args.input, follow_symlinks=args.follow_symlinks, skip=args.out)
    if args.shard is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        args.shard.write(args.out, args.input)
        inputs = args.shard.select(inputs)
    predictor = make_predictor(args)
    sheet = None
    if args.sheet is not None:
        title = f"{printable(args.input)}: inputs beside their crops, top class and probability"
        sheet = SheetCollector(args.sheet, title)
    try:
        summary = run_batch(
            inputs,
            predictor,
            args.out,
            chunk_size=args.chunk_size,
            save_crops=not args.no_crops,
            progress={"auto": None, "on": True, "off": False}[args.progress],
            max_file_bytes=int(args.max_message_mb * 2**20),
            sheet=sheet,
        )
    finally:
        predictor.close()
    return report(summary, args, sheet.draw() if sheet is not None else None)
