"""stn-serve: train Spatial Transformer Networks, export them to ONNX, serve them over gRPC.

Importing this package imports nothing heavy: the training side (torch) and the serving side
(onnxruntime, grpcio) are imported by the modules that need them.
"""

__version__ = "0.1.0"
