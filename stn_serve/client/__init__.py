"""A small Python client for the stn-serve gRPC service (no torch, no protobuf in its results).

from stn_serve.client import Client

with Client("localhost:8001") as client:
    for prediction in client.predict(["a.png", "b.png"]):
        print(prediction.label, prediction.top_k[0].probability, prediction.crop.shape)
"""

from stn_serve.client.client import Client
from stn_serve.client.results import ClassScore, ModelInfo, Prediction

__all__ = ["ClassScore", "Client", "ModelInfo", "Prediction"]
