"""The choices both sides name: one copy each, read by models, ops, flags and the runtime."""

from __future__ import annotations

#: Transform families of the spatial transformer (`stn_serve.ops.transforms` implements them).
TRANSFORMS = ("translation", "attention", "similarity", "affine", "projective", "tps")
#: `model.json`'s transform for the plain CNN baseline, which has none.
NO_TRANSFORM = "none"
#: What the sampler reads outside the image.
PADDING_MODES = ("zeros", "border", "reflection")
#: Where models run: "auto" (CUDA where it can be used, else CPU), "cuda" or "cpu".
DEVICES = ("auto", "cuda", "cpu")
#: ONNX Runtime's execution provider for each device a model can run on.
EXECUTION_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
#: Classes answered per image when a request leaves top_k at 0 (stn.v1's default).
DEFAULT_TOP_K = 5
