"""The choices the project names in more than one place: one copy each, read by models, ops,
data, the command line's flags and the runtime. Flags list them as argparse choices, so a bad
value fails before anything heavy is imported."""

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
#: Image sources for training (`stn_serve.data.load_split` reads them).
DATA_SOURCES = ("digits", "mnist", "fashion-mnist", "folder")
#: Distortions of the STN paper (`stn_serve.data.distort` draws them).
DISTORTIONS = ("none", "R", "RTS", "P", "E", "TC")
