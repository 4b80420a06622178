"""The `stn-serve` command line: one sub-command per module in `stn_serve.commands`.

Each command module defines `add_parser(subparsers, parents)` and `run(args) -> int`. Building the
parser imports only argparse, so `stn-serve serve --help` works with torch absent; a command
imports what it needs inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from stn_serve.errors import StnServeError

# Order is the order shown in `stn-serve --help`.
COMMANDS = ["train", "visualize", "export", "serve", "predict", "batch", "bench", "demo"]


def common_parser() -> argparse.ArgumentParser:
    """Flags every command accepts."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stn-serve",
        description="Train, export and serve Spatial Transformer Networks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [common_parser()]
    for name in COMMANDS:
        module = importlib.import_module(f"stn_serve.commands.{name}")
        sub = module.add_parser(subparsers, parents)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stn_serve.logs import configure_logging

    configure_logging(args.log_level)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except StnServeError as error:  # the CLI's one place to turn errors into exit codes
        logging.getLogger("stn_serve").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
