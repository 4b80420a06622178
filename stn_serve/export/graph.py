"""torch module -> checked ONNX model, with the custom layer written as standard ops + `stn`
functions (see `stn_serve.export.translation`)."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from stn_serve.errors import InvalidInputError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# GridSample exists since opset 16, but the exporter's torch library starts at 18; ONNX Runtime
# 1.31 officially supports up to 26.
SUPPORTED_OPSETS = range(18, 27)


class ServingGraph(nn.Module):
    """What the exported model computes: a model's `ModelOutput` plus the softmax.

    forward(image (Tensor[N, C, H, W] in [0, 1])) -> (logits (Tensor[N, K]),
    probabilities (Tensor[N, K]), crop (Tensor[N, C, h, w]), theta (Tensor[N, P])).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(image)
        return output.logits, torch.softmax(output.logits, dim=1), output.crop, output.theta


def check_opset(opset: int) -> int:
    """`opset` if this exporter supports it, else InvalidInputError."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise InvalidInputError(
            f"opset must be an integer from {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}, "
            f"got {opset!r}"
        )
    return opset


def to_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int = 20,
) -> onnx.ModelProto:
    """Export `module` (in eval mode) with a dynamic batch dimension on every input and output,
    attach the `stn` functions, and run `onnx.checker.check_model(full_check=True)`.

    Args:
        module: takes the example inputs (each Tensor[N, ...], the same N) and returns a tensor
            or a tuple of tensors, each Tensor[N, ...].
        example_inputs: one batch; N must be at least 2, or torch.export fixes the batch at 1.
        input_names, output_names: names of the graph's inputs and outputs, in order.
        opset: the standard ONNX opset to write (one of SUPPORTED_OPSETS).
    """
    import onnx

    from stn_serve.export.translation import attach_functions, translation_table

    check_opset(opset)
    if example_inputs[0].shape[0] < 2:
        raise InvalidInputError(f"example inputs need a batch of at least 2, got {example_inputs[0].shape[0]}")
    batch = torch.export.Dim("batch")
    # Without gradients the custom layer runs its inference op, stn::grid_sample, which the
    # translation table maps (its training variant also returns the backward's context).
    # torch's own decomposition step uses a pytree check it has deprecated and says so on every
    # export; nothing this project passes changes that. With several inputs sharing the one
    # `batch` dimension, torch also says that the name is kept for one axis only: they are one.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"# The axis name: batch will not be used", category=UserWarning
        )
        program = torch.onnx.export(
            module.eval(),
            example_inputs,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamic_shapes=tuple({0: batch} for _ in example_inputs),
            custom_translation_table=translation_table(),
            verbose=False,
        )
    model = program.model_proto
    attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    log.info("exported to onnx", extra={"opset": opset, "nodes": len(model.graph.node),
                                        "functions": [f.name for f in model.functions]})
    return model
