"""Shared fixtures: a model repository holding a small exported model, and a running server on it.

`model_repository` (session scope) is `<tmp>/digits/{1,2}/` (model.onnx + model.json) written by
`stn_serve.export.export_model`: digits-sized 1x28x28 input, 10 labels, an affine spatial
transformer. Tests of the serving side and of the client use it, and `running_server(...)` to
serve it on 127.0.0.1 port 0. `write_model` adds a model built with onnx.helper, for repositories
with models of other shapes or broken ones.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(params=["kernel", "reference"])
def sampler_implementation(request, monkeypatch):
    """Run the test with the bilinear sampler's fused CPU kernel and with its tensor-op
    reference (skipped for the kernel only where no C++ compiler or ninja can build it)."""
    from stn_serve.ops import sampler_kernel

    if request.param == "kernel":
        missing = sampler_kernel.missing_tools()
        if missing is not None:
            pytest.skip(f"the sampler kernel cannot be built here: {missing}")
        sampler_kernel.build()
    monkeypatch.setenv(sampler_kernel.ENABLE_ENV, "1" if request.param == "kernel" else "0")
    return request.param


DIGITS_SHAPE = (1, 28, 28)
DIGITS_LABELS = [str(d) for d in range(10)]
#: Training flags for runs of a few seconds on the CPU: one epoch of a narrow model on a few
#: digits.
TINY_TRAINING_FLAGS = [
    "--epochs",
    "1",
    "--max-train-samples",
    "64",
    "--max-test-samples",
    "32",
    "--width",
    "8",
    "--hidden",
    "32",
    "--loc-width",
    "8",
    "--loc-hidden",
    "16",
    "--device",
    "cpu",
    "--no-progress",
]


def model_json(name: str, version: int, input_shape=DIGITS_SHAPE, labels=DIGITS_LABELS) -> dict:
    """A model.json as docs/contracts.md lays it out, for an affine transformer."""
    return {
        "name": name,
        "version": version,
        "format": "stn-serve-model/1",
        "labels": list(labels),
        "input": {
            "name": "image",
            "shape": list(input_shape),
            "dtype": "float32",
            "range": [0.0, 1.0],
        },
        "outputs": {
            "logits": [len(labels)],
            "probabilities": [len(labels)],
            "crop": list(input_shape),
            "theta": [6],
        },
        "transform": "affine",
        "crop_size": list(input_shape[1:]),
        "normalisation": {"mean": [0.5] * input_shape[0], "std": [0.5] * input_shape[0]},
        "opset": 20,
        "metrics": {},
        "parity": {},
        "versions": {},
        "created": "2026-01-01T00:00:00Z",
    }


def build_affine_stn_onnx(path: Path, input_shape=DIGITS_SHAPE, num_classes=10, seed=0) -> None:
    """Write a small ST-CNN-shaped ONNX graph: linear localisation -> AffineGrid -> GridSample -> linear classifier.

    Same signature as an exported model (input `image` [N, C, H, W]; outputs logits, probabilities,
    crop, theta) with random weights, built with onnx.helper.
    """
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    c, h, w = input_shape
    features = c * h * w
    init = {
        "loc_w": (rng.standard_normal((features, 6)) * 0.01).astype(np.float32),
        "loc_b": np.array([1, 0, 0, 0, 1, 0], np.float32),
        "cls_w": (rng.standard_normal((features, num_classes)) * 0.1).astype(np.float32),
        "cls_b": np.zeros(num_classes, np.float32),
        "flat_shape": np.array([0, -1], np.int64),
        "theta_shape": np.array([-1, 2, 3], np.int64),
    }
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "loc_w"], ["loc"]),
        helper.make_node("Add", ["loc", "loc_b"], ["theta"]),
        helper.make_node("Reshape", ["theta", "theta_shape"], ["theta_2x3"]),
        helper.make_node("Shape", ["image"], ["size"]),
        helper.make_node("AffineGrid", ["theta_2x3", "size"], ["grid"], align_corners=0),
        helper.make_node("GridSample", ["image", "grid"], ["crop"], mode="linear", align_corners=0),
        helper.make_node("Reshape", ["crop", "flat_shape"], ["crop_flat"]),
        helper.make_node("MatMul", ["crop_flat", "cls_w"], ["scores"]),
        helper.make_node("Add", ["scores", "cls_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "affine_stn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", num_classes]),
            helper.make_tensor_value_info("crop", TensorProto.FLOAT, ["N", c, h, w]),
            helper.make_tensor_value_info("theta", TensorProto.FLOAT, ["N", 6]),
        ],
        [numpy_helper.from_array(value, name) for name, value in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))


def write_model(
    repository: Path,
    name: str,
    version: int,
    input_shape=DIGITS_SHAPE,
    labels=DIGITS_LABELS,
    seed=0,
) -> Path:
    """Add `<repository>/<name>/<version>/` with model.onnx and model.json; returns the folder."""
    directory = repository / name / str(version)
    build_affine_stn_onnx(directory / "model.onnx", input_shape, len(labels), seed)
    (directory / "model.json").write_text(
        json.dumps(model_json(name, version, input_shape, labels))
    )
    return directory


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """A repository with model `digits`, versions 1 and 2: freshly initialised small ST-CNNs
    (affine, 1x28x28, labels "0".."9") exported through `stn_serve.export.export_model`."""
    import torch

    from stn_serve.export import export_model
    from stn_serve.models import ModelConfig, build_model

    root = tmp_path_factory.mktemp("export")
    config = ModelConfig(width=8, hidden=32, loc_width=8, loc_hidden=16)
    for version in (1, 2):
        generator = torch.Generator().manual_seed(version)
        torch.manual_seed(version)
        verify_inputs = torch.rand((4, *DIGITS_SHAPE), generator=generator)
        export_model(
            build_model(config),
            config,
            DIGITS_LABELS,
            root,
            "digits",
            version=version,
            verify_inputs=verify_inputs,
        )
    return root


@pytest.fixture(scope="session")
def digits_images() -> np.ndarray:
    """Four float32 [1, 28, 28] images in [0, 1]."""
    return np.random.default_rng(0).random((4, *DIGITS_SHAPE), dtype=np.float32)


def cuda_usable() -> bool:
    """Whether ONNX Runtime can run a session on the CUDA execution provider here (it falls back
    to the CPU silently, so this builds a session and reads back what it got)."""
    import tempfile

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        build_affine_stn_onnx(path)
        session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        return session.get_providers()[0] == "CUDAExecutionProvider"


@contextlib.contextmanager
def running_server(repository, **options):
    """Serve `repository` (a path or a loaded ModelRepository) on 127.0.0.1 port 0; yields (server, port)."""
    from stn_serve.server import create_server

    server, port = create_server(repository, "127.0.0.1:0", **options)
    server.start()
    try:
        yield server, port
    finally:
        server.stop(grace=None)
