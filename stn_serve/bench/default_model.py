"""The model `stn-serve bench serve` measures when given no repository: a freshly initialised
digits-sized ST-CNN, exported. Training side: needs torch, which the serving benchmark itself
never imports."""

from __future__ import annotations

from pathlib import Path

from stn_serve.errors import InvalidInputError

NAME = "stcnn"


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
