"""Models: the spatial-transformer classifier (ST-CNN), its parts, and the plain CNN baseline.

`build_model(ModelConfig(...))` is the entry point; see docs/contracts.md for the forward contract.
Names are imported on first use, so `stn_serve.models.config` (stdlib only) loads without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ARCHS": "config",
    "PADDING_MODES": "config",
    "TRANSFORMS": "config",
    "ModelConfig": "config",
    "build_model": "build",
    "count_parameters": "build",
    "matched_baseline_config": "build",
    "LocalisationNet": "localisation",
    "CNNBaseline": "networks",
    "ModelOutput": "networks",
    "STCNN": "networks",
    "SpatialTransformer": "transformer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
