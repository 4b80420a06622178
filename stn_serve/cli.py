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

from stn_serve import __version__
from stn_serve.commands.formatting import HelpFormatter
from stn_serve.errors import StnServeError

log = logging.getLogger("stn_serve")

# Order is the order shown in `stn-serve --help`.
COMMANDS = [
    "train",
    "evaluate",
    "visualize",
    "export",
    "serve",
    "predict",
    "batch",
    "merge",
    "bench",
    "demo",
]


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
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    # The CLI's one place to turn errors into exit codes; each is printed once, as one line.
    except StnServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # The machine refused something (a full disk, a folder not writable): say what and where.
        log.debug("operating system error", exc_info=True)
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1


def os_error_message(error: OSError) -> str:
    """`cannot use PATH: REASON` for an OSError that names a file, else its own text."""
    if error.filename is None:
        return str(error)
    return f"cannot use {error.filename}: {error.strerror or error}"
