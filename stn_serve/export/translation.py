"""How the torch.onnx dynamo exporter writes the custom layer's ops (`torch.ops.stn.*`).

- `stn::grid_sample` becomes the standard `GridSample` op (linear mode, the op's padding mode
  and align_corners).
- Each grid generator becomes one node of the custom domain `stn` (`stn.AffineGrid`, ...) whose
  definition, an ONNX local function, `attach_functions` adds to the model after export.

Why the definitions are added afterwards: the exporter converts the graph to the requested opset
with onnxscript's version converter, which inlines every local function first; a node with a
schema but no definition passes through untouched, so the function survives as one named node.
The graph is written with opset 18 ops (the exporter's torch library is, too); the converter then
updates them, e.g. GridSample's mode "bilinear" becomes "linear" from opset 20 on.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.values import OnnxFunction, Op

from stn_serve.export.functions import (
    DOMAIN,
    DOMAIN_VERSION,
    AffineGrid,
    BaseGrid,
    ProjectiveGrid,
    TPSGrid,
    stn,
)

# Importing stn_serve.ops also registers the torch.ops.stn.* ops the table maps.
from stn_serve.ops import tps_control_points, tps_kernel_matrix

# Every function a model may call, by name; nested calls (e.g. to BaseGrid) included.
FUNCTIONS: dict[str, OnnxFunction] = {
    f.name: f for f in (BaseGrid, AffineGrid, ProjectiveGrid, TPSGrid)
}


def _schema(function: OnnxFunction) -> onnx.defs.OpSchema:
    """An operator schema with the function's inputs, outputs and (integer) attributes, so that
    the exporter can write a node that calls it."""
    proto = function.to_function_proto()
    schema = onnx.defs.OpSchema
    return schema(
        proto.name,
        DOMAIN,
        DOMAIN_VERSION,
        doc=proto.doc_string,
        inputs=[schema.FormalParameter(name, "T") for name in proto.input],
        outputs=[schema.FormalParameter(name, "T") for name in proto.output],
        type_constraints=[("T", ["tensor(float)", "tensor(double)"], "float32 or float64")],
        attributes=[schema.Attribute(name, schema.AttrType.INT, name) for name in proto.attribute],
    )


def _call(function: OnnxFunction) -> Op:
    return Op(stn, function.name, _schema(function))


def _grid_generator(function: OnnxFunction) -> Callable:
    node = _call(function)

    def translate(matrix, size, align_corners):
        return node(matrix, height=size[2], width=size[3], align_corners=int(align_corners))

    return translate


def _tps_grid() -> Callable:
    node = _call(TPSGrid)

    def translate(offsets, size, align_corners, control_grid):
        height, width = size[2], size[3]
        kernel = tps_kernel_matrix(height, width, align_corners, control_grid).view(height, width, -1)
        control = tps_control_points(control_grid)
        # float64 constants, cast to the graph's type as the op casts them to the offsets'.
        kernel, control = (op.CastLike(op.Constant(value=ir.tensor(t.numpy())), offsets)
                           for t in (kernel, control))
        return node(offsets, kernel, control)

    return translate


def _grid_sample(input, grid, padding_mode, align_corners):
    return op.GridSample(input, grid, mode="bilinear", padding_mode=padding_mode,
                         align_corners=int(align_corners))


def translation_table() -> dict:
    """`custom_translation_table` for `torch.onnx.export(dynamo=True)`."""
    return {
        torch.ops.stn.grid_sample.default: _grid_sample,
        torch.ops.stn.affine_grid.default: _grid_generator(AffineGrid),
        torch.ops.stn.projective_grid.default: _grid_generator(ProjectiveGrid),
        torch.ops.stn.tps_grid.default: _tps_grid(),
    }


def attach_functions(model: onnx.ModelProto) -> None:
    """Add the definition of every `stn` function the graph calls (and those they call), with
    the model's standard opset version, and import the `stn` domain."""
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    wanted = [node.op_type for node in model.graph.node if node.domain == DOMAIN]
    added: dict[str, onnx.FunctionProto] = {}
    while wanted:
        name = wanted.pop()
        if name in added:
            continue
        proto = FUNCTIONS[name].to_function_proto()
        del proto.opset_import[:]
        proto.opset_import.extend([onnx.helper.make_opsetid("", opset),
                                   onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
        added[name] = proto
        wanted += [node.op_type for node in proto.node if node.domain == DOMAIN]
    model.functions.extend(added.values())
    if added and all(entry.domain != DOMAIN for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
