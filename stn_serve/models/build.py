"""`build_model` and the parameter-matched CNN baseline."""

from __future__ import annotations

from torch import nn

from stn_serve.errors import InvalidInputError
from stn_serve.models.config import ModelConfig
from stn_serve.models.networks import STCNN, CNNBaseline


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised STCNN or CNNBaseline, as `config.arch` says."""
    return STCNN(config) if config.arch == "stcnn" else CNNBaseline(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_baseline_config(config: ModelConfig, min_hidden: int = 16) -> ModelConfig:
    """A "cnn" config with the same depth and about the same parameter count as `config`'s model.

    The count is linear in `hidden` for a fixed `width`, so for each candidate width the hidden
    size that meets the target is solved for; the width closest to `config.width` whose hidden
    size is at least `min_hidden` wins. The result is within one hidden unit's worth of
    parameters of the target.
    """
    target = count_parameters(build_model(config))
    baseline = config.replace(arch="cnn")
    best = None
    for width in range(1, 4 * config.width + 1):
        at_one = count_parameters(build_model(baseline.replace(width=width, hidden=1)))
        per_unit = count_parameters(build_model(baseline.replace(width=width, hidden=2))) - at_one
        hidden = 1 + round((target - at_one) / per_unit)
        if hidden < min_hidden:
            continue
        rank = abs(width - config.width)
        if best is None or rank < best[0]:
            best = (rank, width, hidden)
    if best is None:
        raise InvalidInputError(
            f"no baseline width gives {target} parameters with hidden >= {min_hidden}"
        )
    return baseline.replace(width=best[1], hidden=best[2])
