"""`stn-serve bench NAME`: run one benchmark from `stn_serve.bench`.

Each benchmark module defines `HELP`, `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import importlib

from stn_serve.commands.formatting import HelpFormatter

# Order is the order shown in `stn-serve bench --help`.
BENCHMARKS = ["layer", "accuracy", "export", "serve", "batch"]


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "bench",
        parents=parents,
        help="run a benchmark and print measured figures",
        formatter_class=HelpFormatter,
    )
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        module = importlib.import_module(f"stn_serve.bench.{name}")
        sub = benchmarks.add_parser(
            name,
            parents=parents,
            help=module.HELP,
            description=module.HELP,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run_benchmark=module.run)
    return parser


def run(args) -> int:
    return args.run_benchmark(args)
