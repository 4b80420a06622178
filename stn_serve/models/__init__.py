"""Models: the spatial-transformer classifier (ST-CNN), its parts, and the plain CNN baseline.

`build_model(ModelConfig(...))` is the entry point; see docs/contracts.md for the forward contract.
Names are imported on first use, so `stn_serve.models.config` (stdlib only) loads without torch.
"""

from __future__ import annotations

from stn_serve._lazy import lazy_exports

_EXPORTS = {
    "ARCHS": "config",
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

__getattr__ = lazy_exports(__name__, _EXPORTS)
