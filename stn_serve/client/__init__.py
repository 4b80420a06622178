"""A small Python client for the stn-serve gRPC service (no torch, no protobuf in its results).

from stn_serve.client import Client

with Client("localhost:8001") as client:
    for prediction in client.predict(["a.png", "b.png"]):
        print(prediction.label, prediction.top_k[0].probability, prediction.crop.shape)

Names are imported on first use, so the command line reads the client's defaults
(`stn_serve.client.defaults`) without loading gRPC.
"""

from __future__ import annotations

from stn_serve._lazy import lazy_exports

_EXPORTS = {
    "Client": "client",
    "ClassScore": "results",
    "ModelInfo": "results",
    "Prediction": "results",
    "VersionState": "results",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
