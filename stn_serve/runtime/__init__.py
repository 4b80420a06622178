"""Running exported models on ONNX Runtime: a model repository, one session per model version.

Serving side: never imports torch.
"""

from stn_serve.runtime.model import OnnxModel
from stn_serve.runtime.options import GRAPH_OPTIMIZATIONS, RuntimeOptions
from stn_serve.runtime.providers import DEVICES, DeviceUnavailableError
from stn_serve.runtime.repository import ModelRepository
from stn_serve.runtime.spec import INPUT_NAME, OUTPUT_NAMES, ModelSpec, read_spec

__all__ = [
    "DEVICES",
    "GRAPH_OPTIMIZATIONS",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "DeviceUnavailableError",
    "ModelRepository",
    "ModelSpec",
    "OnnxModel",
    "RuntimeOptions",
    "read_spec",
]
