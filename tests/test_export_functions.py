"""The `stn` ONNX functions on their own, in ONNX Runtime, against the custom layer's grid ops."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from stn_serve.export.session import cpu_session, run
from stn_serve.export.translation import attach_functions
from stn_serve.ops import (
    affine_grid,
    projective_grid,
    tps_control_points,
    tps_grid,
    tps_kernel_matrix,
)

# (h, w): one-pixel rows and columns (where align_corners puts the only pixel at 0), and a
# non-square grid.
SIZES = [(1, 1), (1, 5), (4, 1), (7, 9)]
DTYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float64: onnx.TensorProto.DOUBLE}
CASES = list(itertools.product(SIZES, (False, True), DTYPES))
# float32: the grid is a 3-term dot product of values of size ~1, so a few roundings of 6e-8;
# float64: the same in double.
ATOL = {torch.float32: 1e-6, torch.float64: 1e-13}


def function_model(op_type: str, inputs: dict[str, np.ndarray], attributes: dict, elem_type: int) -> bytes:
    """A model whose graph is one call of stn.<op_type> on graph inputs named as `inputs`."""
    node = helper.make_node(op_type, list(inputs), ["grid"], domain="stn", **attributes)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(name, elem_type, list(value.shape)) for name, value in inputs.items()],
        [helper.make_tensor_value_info("grid", elem_type, ["N", "h", "w", 2])],
    )
    # IR version 10 is the one onnx writes for opset 20; ONNX Runtime 1.31 reads up to 13.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def run_function(op_type: str, inputs: dict[str, torch.Tensor], attributes: dict) -> torch.Tensor:
    arrays = {name: value.numpy() for name, value in inputs.items()}
    dtype = next(iter(inputs.values())).dtype
    session = cpu_session(function_model(op_type, arrays, attributes, DTYPES[dtype]))
    return torch.from_numpy(run(session, arrays)["grid"])


@pytest.mark.parametrize(("size", "align_corners", "dtype"), CASES)
def test_affine_and_projective_grids_match_the_ops(size, align_corners, dtype):
    generator = torch.Generator().manual_seed(0)
    height, width = size
    attributes = {"height": height, "width": width, "align_corners": int(align_corners)}
    matrix = (torch.eye(2, 3, dtype=torch.float64) + 0.3 * torch.randn(3, 2, 3, generator=generator,
                                                                      dtype=torch.float64)).to(dtype)
    expected = affine_grid(matrix, (3, 1, height, width), align_corners)
    torch.testing.assert_close(run_function("AffineGrid", {"matrix": matrix}, attributes), expected,
                               rtol=0, atol=ATOL[dtype])
    homography = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, 3, generator=generator,
                                                                       dtype=torch.float64)
    homography = homography.to(dtype)
    expected = projective_grid(homography, (3, 1, height, width), align_corners)
    torch.testing.assert_close(run_function("ProjectiveGrid", {"homography": homography}, attributes),
                               expected, rtol=0, atol=10 * ATOL[dtype])


@pytest.mark.parametrize(("size", "align_corners", "dtype"), CASES)
def test_tps_grid_matches_the_op(size, align_corners, dtype):
    generator = torch.Generator().manual_seed(0)
    height, width = size
    control_grid = (3, 4)
    offsets = (0.1 * torch.randn(2, 12, 2, generator=generator, dtype=torch.float64)).to(dtype)
    kernel = tps_kernel_matrix(height, width, align_corners, control_grid).view(height, width, -1)
    inputs = {"offsets": offsets, "kernel": kernel.to(dtype),
              "control_points": tps_control_points(control_grid).to(dtype)}
    expected = tps_grid(offsets, (2, 1, height, width), align_corners, control_grid)
    # The kernel weights sum over 12 control points, each weight up to ~1.
    torch.testing.assert_close(run_function("TPSGrid", inputs, {}), expected, rtol=0, atol=10 * ATOL[dtype])


def test_nested_function_definitions_are_attached():
    model = onnx.load_from_string(function_model(
        "AffineGrid", {"matrix": np.zeros((1, 2, 3), np.float32)},
        {"height": 2, "width": 2, "align_corners": 0}, onnx.TensorProto.FLOAT))
    assert sorted((f.domain, f.name) for f in model.functions) == [("stn", "AffineGrid"), ("stn", "BaseGrid")]
    assert all({o.domain: o.version for o in f.opset_import} == {"": 20, "stn": 1} for f in model.functions)
