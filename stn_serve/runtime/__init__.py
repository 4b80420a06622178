"""Running exported models on ONNX Runtime: a live model repository (version states, version
policies, rescans, drains), model control, and one session per model version.

Serving side: never imports torch. Names are imported on first use, so the command line reads
`RuntimeOptions`' and `ModelControlOptions`' defaults without loading numpy or ONNX Runtime.
"""

from __future__ import annotations

from stn_serve._lazy import lazy_exports

_EXPORTS = {
    "GRAPH_OPTIMIZATIONS": "options",
    "MODEL_CONTROL_MODES": "options",
    "ModelControlOptions": "options",
    "RuntimeOptions": "options",
    "ModelControl": "control",
    "ModelRepository": "repository",
    "State": "states",
    "VersionStatus": "states",
    "Lease": "lease",
    "OnnxModel": "model",
    "open_version": "one_version",
    "Batching": "settings",
    "ModelSettings": "settings",
    "VersionPolicy": "settings",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
