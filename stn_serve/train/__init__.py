"""Training: `fit(TrainConfig) -> TrainResult`, checkpoints, metrics and plots.

Names are imported on first use, so `stn_serve.train.config` (stdlib only) loads without torch
and the command-line parsers stay importable on the serving side.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "config",
    "TrainResult": "config",
    "FORMAT": "checkpoint",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "fit": "trainer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
