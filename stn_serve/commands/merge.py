"""`stn-serve merge`: join the output folders of `stn-serve batch --shard` into one."""

from __future__ import annotations

from pathlib import Path

from stn_serve.commands.formatting import HelpFormatter


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "merge",
        parents=parents,
        help="merge the output folders of `batch --shard` into one predictions.jsonl",
        description="Merge the output folders of `stn-serve batch --shard INDEX/COUNT` into "
        "OUT/predictions.jsonl and OUT/failures.jsonl. Refuses shards of different splits, a "
        "shard given twice and (without --partial) missing shards; leaves out lines cut short by "
        "an interrupted job and lines of files that belong to another shard, and counts them. "
        "Crops stay in the shard folders; each line's crop path is rewritten relative to OUT.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "shards", nargs="+", type=Path, metavar="SHARD_DIR", help="output folders of batch --shard"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged files")
    parser.add_argument(
        "--partial", action="store_true", help="merge even when some shards are missing"
    )
    return parser


def run(args) -> int:
    from stn_serve.batch import merge_shards

    summary = merge_shards(args.shards, args.out, partial=args.partial)
    print(
        f"merged {summary.shards} of {summary.count} shards: {summary.predictions} predictions, "
        f"{summary.failures} failures in {args.out}"
    )
    left_out = {
        "lines cut short": summary.unreadable,
        "repeated lines": summary.repeated,
        "lines of another shard": summary.misplaced,
    }
    if any(left_out.values()):
        print("left out: " + ", ".join(f"{n} {what}" for what, n in left_out.items() if n))
    if len(summary.models) > 1:
        models = ", ".join(f"{name} v{v}: {n}" for (name, v), n in summary.models.items())
        print(f"warning: the shards were predicted by different models ({models})")
    return 0
