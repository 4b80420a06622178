"""Running exported models on ONNX Runtime: a model repository, one session per model version.

Serving side: never imports torch. Names are imported on first use, so the command line reads
`RuntimeOptions`' defaults without loading numpy or ONNX Runtime.
"""

from __future__ import annotations

from stn_serve._lazy import lazy_exports

_EXPORTS = {
    "GRAPH_OPTIMIZATIONS": "options",
    "RuntimeOptions": "options",
    "ModelRepository": "repository",
    "OnnxModel": "model",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
