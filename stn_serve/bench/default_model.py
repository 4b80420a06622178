"""The model `stn-serve bench serve` and `bench batch` measure: one from --repository, or, when
given none, a freshly initialised digits-sized ST-CNN, exported. Exporting it needs torch (the
training side), which the serving benchmarks themselves never import."""

from __future__ import annotations

import argparse
from pathlib import Path

from stn_serve.contract import DEVICES
from stn_serve.errors import InvalidInputError

NAME = "stcnn"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--repository, --model, --version and --device: which model a benchmark runs, and where."""
    add = parser.add_argument
    add(
        "--repository",
        type=Path,
        default=None,
        help="model repository (None: export a freshly initialised digits-sized ST-CNN into a "
        "temporary one, which needs torch)",
    )
    add("--model", type=str, default="", help="model name (empty: the only one)")
    add("--version", type=int, default=0, help="model version (0: the newest)")
    add("--device", choices=DEVICES, default="auto", help="ONNX Runtime device")


def model_repository(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """(repository, model name) the `add_model_arguments` flags name; without --repository, the
    default model exported into `scratch`."""
    if args.repository is not None:
        return args.repository, args.model
    return scratch, export_default_model(scratch)


def export_default_model(repository: Path) -> str:
    """Export the default model into `repository` as version 1; returns its name."""
    try:
        import torch
    except ImportError:
        raise InvalidInputError(
            "no --repository given and torch is not installed to export a default model; "
            "pass --repository DIR --model NAME"
        ) from None
    from stn_serve.export import export_model
    from stn_serve.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig()  # the digits defaults: 1x28x28, 10 classes, affine transformer
    labels = [str(digit) for digit in range(config.num_classes)]
    export_model(build_model(config), config, labels, repository, NAME, version=1)
    return NAME
