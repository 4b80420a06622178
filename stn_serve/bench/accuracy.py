"""`stn-serve bench accuracy`: ST-CNN against the plain CNN with the same parameter budget.

Both models train with the same data, epochs, schedule and seed; the CNN's width is chosen so
its parameter count matches the ST-CNN's. Prints each model's test error, the ratio
ST-CNN / CNN and the wall time, and writes them to accuracy.json in --out.

For reference, the STN paper (Jaderberg et al. 2015, table 1) reports 0.8 % (CNN) against
0.5 % (ST-CNN) test error on RTS-distorted MNIST, a ratio of 0.625.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from stn_serve.bench.table import (
    MODELS,
    TABLE_DISTORTIONS,
    distortion_list,
    model_list,
    run_table,
)
from stn_serve.errors import InvalidInputError

HELP = (
    "train the ST-CNN and the parameter-matched CNN on RTS-distorted data; print both test errors "
    "(--table: the STN paper's table 1)"
)

#: Targets of the full run: ST-CNN accuracy and its error as a share of the CNN's.
TARGET_ACCURACY = 0.90
TARGET_ERROR_RATIO = 0.6

#: The full run's data. Epochs and batch size come from the data source's training preset
#: (`stn_serve.train.presets`), like `stn-serve train --data fashion-mnist`.
FULL = {"data": "fashion-mnist", "distortion": "RTS"}
#: --quick: the embedded digits with their preset, about a minute per model on two cores.
QUICK = {"data": "digits"}


@dataclasses.dataclass(frozen=True)
class Unset:
    """The default of a flag whose value depends on the mode (full run, --quick, --table): a flag
    still holding one was left out. Shows its full-run value in --help."""

    value: object

    def __str__(self) -> str:
        return str(self.value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stn_serve.train.options import DEFAULTS, add_training_arguments

    add_training_arguments(parser)
    parser.set_defaults(
        **{name: Unset(FULL.get(name, getattr(DEFAULTS, name))) for name in {**FULL, **QUICK}}
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"small run on digits: flags left out take {QUICK}",
    )
    mode.add_argument(
        "--table",
        action="store_true",
        help="the STN paper's table 1 instead: the CNN and ST-CNNs with affine, projective and "
        "thin-plate-spline transformers on each of --distortions, one training run a cell (flags "
        "left out take the training defaults: `stn-serve train --help`); resumes where an "
        "earlier run stopped",
    )
    parser.add_argument(
        "--distortions",
        type=distortion_list,
        default=",".join(TABLE_DISTORTIONS),
        metavar="K,K,...",
        help="with --table: the table's columns",
    )
    parser.add_argument(
        "--models",
        type=model_list,
        default=",".join(MODELS),
        metavar="M,M,...",
        help="with --table: the table's rows",
    )
    parser.add_argument(
        "--out",
        dest="out_dir",
        type=str,
        default=None,
        help="folder for the runs' checkpoints and accuracy.json (None: runs/bench-accuracy; "
        "with --table runs/bench-table, and table.json and table.md)",
    )


def _settings(args: argparse.Namespace) -> argparse.Namespace:
    """The flags with each one left out given its mode's value: --quick's, the training defaults
    for --table, else the full run's."""
    from stn_serve.train.options import DEFAULTS

    values = vars(args).copy()
    for name, value in values.items():
        if not isinstance(value, Unset):
            continue
        if args.table:
            values[name] = getattr(DEFAULTS, name)
        elif args.quick:
            values[name] = QUICK.get(name, value.value)
        else:
            values[name] = value.value
    if values["out_dir"] is None:
        values["out_dir"] = "runs/bench-table" if args.table else "runs/bench-accuracy"
    return argparse.Namespace(**values)


def run(args: argparse.Namespace) -> int:
    if args.table and not isinstance(args.distortion, Unset):
        raise InvalidInputError(
            "--table trains every distortion of --distortions, not --distortion"
        )
    args = _settings(args)
    if args.table:
        return run_table(args)
    from stn_serve.train import fit
    from stn_serve.train.canonical import format_spread
    from stn_serve.train.options import config_from_args

    out_dir = Path(args.out_dir)
    results = {}
    for arch in ("stcnn", "cnn"):
        config = config_from_args(args, arch=arch, match_params=True, out_dir=str(out_dir / arch))
        started = time.perf_counter()
        result = fit(config)
        results[arch] = {
            **result.metrics,
            "test_error": 1.0 - result.metrics["test_accuracy"],
            "wall_seconds": time.perf_counter() - started,
        }
    stcnn, cnn = results["stcnn"], results["cnn"]
    ratio = stcnn["test_error"] / cnn["test_error"] if cnn["test_error"] > 0 else float("inf")
    summary = {
        "data": args.data,
        "distortion": args.distortion,
        "epochs": stcnn["epochs"],
        "seed": args.seed,
        "quick": args.quick,
        "stcnn": stcnn,
        "cnn": cnn,
        "error_ratio": ratio,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "accuracy.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    print(
        f"accuracy benchmark: {args.data} / {args.distortion}, {stcnn['epochs']} epochs, seed {args.seed}"
    )
    print(f"{'model':<8}{'parameters':>12}{'test acc':>10}{'test err':>10}{'wall s':>9}")
    for name, row in results.items():
        print(
            f"{name:<8}{row['parameters']:>12d}{row['test_accuracy']:>10.4f}"
            f"{100 * row['test_error']:>9.2f}%{row['wall_seconds']:>9.1f}"
        )
    print(f"both models: {sum(row['wall_seconds'] for row in results.values()):.1f} s wall")
    print(
        f"error ratio ST-CNN / CNN: {ratio:.3f} (target <= {TARGET_ERROR_RATIO}; paper, RTS MNIST: 0.5/0.8 = 0.625)"
    )
    if "pose_spread" in stcnn:
        print(format_spread(stcnn["pose_spread"]))
    if not args.quick:
        print(
            f"ST-CNN accuracy {stcnn['test_accuracy']:.4f} (target >= {TARGET_ACCURACY}); "
            f"ST-CNN training time {stcnn['train_seconds']:.0f} s"
        )
    return 0
