"""Export a model into the model repository: torch -> ONNX -> checked -> verified -> published.

`export_model` is the one function (as in timm's onnx export): eval(), reference outputs, named
inputs and outputs with a dynamic batch, `check_model(full_check=True)`, then ONNX Runtime
(CPU provider) against torch on real images, and only then the files, moved into place at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stn_serve.contract import (
    GRADIENTS_FILE,
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAMES,
    SPEC_FILE,
    check_name,
)
from stn_serve.errors import InvalidInputError
from stn_serve.export.gradients import (
    GRADIENT_INPUTS,
    GRADIENT_OUTPUTS,
    TransformerBackward,
    autograd_reference,
    spatial_transformer,
)
from stn_serve.export.graph import ServingGraph, check_opset, to_onnx
from stn_serve.export.metadata import describe, set_metadata
from stn_serve.export.model_config import write_model_config
from stn_serve.export.parity import (
    GRADIENT_TOLERANCES,
    TOLERANCES,
    Tolerance,
    compare,
    require_parity,
)
from stn_serve.export.repository import choose_version, publish
from stn_serve.models import ModelConfig

log = logging.getLogger(__name__)

VERIFY_SOURCE = "digits"
VERIFY_COUNT = 64
# Seed of the noise on theta and of grad_crop in the gradient verification.
GRADIENT_SEED = 0


def verification_images(config: ModelConfig) -> torch.Tensor:
    """Tensor[VERIFY_COUNT, C, H, W]: the first test images of VERIFY_SOURCE, at the model's
    input size and channels."""
    from stn_serve.data import load_split

    split = load_split(VERIFY_SOURCE, "test", image_size=config.input_size, channels=config.in_channels)
    return split.images[:VERIFY_COUNT]


def _check_images(images: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    expected = (config.in_channels, *config.input_size)
    if (not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected
            or images.shape[0] < 2 or images.dtype != torch.float32):
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(
            f"verification images must be float32 [N >= 2, {', '.join(map(str, expected))}], got {got}"
        )
    return images


def verify(
    model: bytes,
    reference: Callable[..., dict[str, torch.Tensor]],
    inputs: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    tolerances: dict[str, Tolerance],
    what: str,
) -> dict:
    """Run the exported model in ONNX Runtime at batch 1 and at the whole batch, compare with
    `reference(*inputs)`, and raise ParityError when an output is out of tolerance.

    Args:
        model: the serialised ONNX model.
        reference: torch's outputs, {name: Tensor[N, ...]}, for a batch of inputs.
        inputs: each Tensor[N, ...], the same N.
        input_names: the graph's input names, in the order of `inputs`.
        tolerances: {output name: Tolerance}.
        what: how the error names the model.

    Returns:
        {"batch_sizes", "outputs": {name: figures}} (see `parity.compare`).
    """
    from stn_serve.export.session import cpu_session, run

    session = cpu_session(model)
    batch_sizes = sorted({1, inputs[0].shape[0]})
    expected, actual = {}, {}
    for size in batch_sizes:
        batch = tuple(tensor[:size] for tensor in inputs)
        for name, value in reference(*batch).items():
            expected.setdefault(name, []).append(value.detach().numpy())
        got = run(session, {name: tensor.numpy() for name, tensor in zip(input_names, batch)})
        for name, value in got.items():
            actual.setdefault(name, []).append(value)
    figures = compare({k: np.concatenate(v) for k, v in expected.items()},
                      {k: np.concatenate(v) for k, v in actual.items()}, tolerances)
    log.info("parity", extra={"model": what, "batch_sizes": batch_sizes, "figures": figures})
    require_parity(figures, what)
    return {"batch_sizes": batch_sizes, "outputs": figures}


def export_serving_model(model: nn.Module, images: torch.Tensor, opset: int):
    """The checked and verified serving graph of `model` and its parity figures.

    Returns:
        (onnx.ModelProto, dict)
    """
    graph = ServingGraph(model.eval())
    proto = to_onnx(graph, (images[:2],), (INPUT_NAME,), OUTPUT_NAMES, opset)

    def reference(image):
        with torch.no_grad():
            return dict(zip(OUTPUT_NAMES, graph(image)))

    parity = verify(proto.SerializeToString(), reference, (images,), (INPUT_NAME,), TOLERANCES, "model.onnx")
    return proto, parity


def export_gradient_model(model: nn.Module, images: torch.Tensor, opset: int):
    """The checked and verified backward of `model`'s spatial transformer and its parity figures.

    Verified at the model's own transforms of `images`, moved by a little noise so that grid
    points do not sit exactly on pixel centres (where the sampler's derivative jumps), against a
    fixed-seed output gradient.

    Returns:
        (onnx.ModelProto, dict)
    """
    transformer = spatial_transformer(model.eval())
    generator = torch.Generator().manual_seed(GRADIENT_SEED)
    with torch.no_grad():
        theta = model(images).theta
    theta = theta + 1e-2 * torch.randn(theta.shape, generator=generator)
    crop_shape = (images.shape[0], images.shape[1], *transformer.crop_size)
    grad_crop = torch.randn(crop_shape, generator=generator)
    inputs = (images, theta, grad_crop)
    proto = to_onnx(TransformerBackward(transformer), tuple(t[:2] for t in inputs),
                    GRADIENT_INPUTS, GRADIENT_OUTPUTS, opset)
    parity = verify(proto.SerializeToString(), lambda *batch: autograd_reference(transformer, *batch),
                    inputs, GRADIENT_INPUTS, GRADIENT_TOLERANCES, "gradients.onnx")
    return proto, parity


def export_model(
    model: nn.Module,
    config: ModelConfig,
    labels: list[str],
    repository: str | os.PathLike,
    name: str,
    version: int | None = None,
    opset: int = 20,
    metrics: dict | None = None,
    verify_inputs: torch.Tensor | None = None,
    gradients: bool = False,
) -> Path:
    """Export `model` to `<repository>/<name>/<version>/` (model.onnx + model.json), and
    Triton's `<repository>/<name>/config.pbtxt` when the model has none yet.

    Nothing is written unless the graph passes `onnx.checker` and matches torch in ONNX Runtime
    within `parity.TOLERANCES` (and `GRADIENT_TOLERANCES` for the gradients).

    Args:
        model: built by `build_model(config)`, trained or not; put in eval mode.
        config: its ModelConfig.
        labels: class names, one per logit.
        repository: the model repository's root folder.
        name: the model's folder name.
        version: a free positive integer, or None for the next free one.
        opset: the standard ONNX opset (see `graph.SUPPORTED_OPSETS`).
        metrics: training figures to record (default none).
        verify_inputs (Tensor[N, C, H, W] | None): float32 images in [0, 1], N >= 2, to verify
            on; default the first 64 images of the digits test split at the model's input size.
        gradients: also write gradients.onnx, the spatial transformer's backward (ST-CNN only).

    Returns:
        The version folder.

    Raises:
        InvalidInputError: a bad name, version, opset, label count or verification input.
        ParityError: ONNX Runtime's outputs differ from torch's beyond the tolerances.
    """
    check_name(name)
    check_opset(opset)
    if len(labels) != config.num_classes:
        raise InvalidInputError(f"need {config.num_classes} labels (one per class), got {len(labels)}")
    version = choose_version(Path(repository), name, version)
    images = _check_images(verification_images(config) if verify_inputs is None else verify_inputs, config)

    proto, parity = export_serving_model(model, images, opset)
    files = {}
    if gradients:
        gradient_proto, parity["gradients"] = export_gradient_model(model, images, opset)
        files[GRADIENTS_FILE] = gradient_proto.SerializeToString()
    with torch.no_grad():
        num_params = model(images[:1]).theta.shape[1]
    spec = describe(config, labels, name, version, opset, num_params, metrics or {}, parity)
    set_metadata(proto, spec)
    files[MODEL_FILE] = proto.SerializeToString()
    files[SPEC_FILE] = spec.dumps().encode()
    target = publish(Path(repository), name, version, files)
    write_model_config(Path(repository), spec)
    log.info("exported", extra={"path": str(target), "opset": opset, "files": sorted(files)})
    return target


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    repository: str | os.PathLike,
    name: str,
    version: int | None = None,
    opset: int = 20,
    gradients: bool = False,
) -> Path:
    """`export_model` for a checkpoint: its model, labels and metrics, verified on the digits
    test split at the model's input size.

    Raises:
        NotFoundError: the checkpoint does not exist.
        InvalidInputError: it is not a readable stn-serve checkpoint, or as `export_model`.
    """
    from stn_serve.train.checkpoint import load_checkpoint

    check_name(name)
    check_opset(opset)
    checkpoint = load_checkpoint(checkpoint_path)
    return export_model(checkpoint.build_model(), checkpoint.model_config, checkpoint.labels,
                        repository, name, version=version, opset=opset,
                        metrics=checkpoint.metrics, gradients=gradients)
