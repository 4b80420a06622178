"""Thin-plate-spline grid generator with a hand-written backward.

K = rows * cols control points c_k lie on a regular lattice over [-1, 1]^2 (x = linspace(-1, 1,
cols) fastest, y = linspace(-1, 1, rows)). The transform moves them to c_k + offsets[n, k] and the
thin-plate spline through those K pairs maps every output position p to

    grid[n, p] = sum_k M[p, k] * (c_k + offsets[n, k])          # grid = M @ (C + offsets)

where M (Tensor[H * W, K], `tps_kernel_matrix`) depends only on the control lattice, the output
size and align_corners. With U(r2) = r2 * log(r2) (U(0) = 0) of squared distances,

    L = [[U(|c_i - c_j|^2)]_{K x K}, Q],  Q = rows (1, x_k, y_k)  (K x 3)
        [Q^T,                        0_{3 x 3}]
    A = [[U(|p - c_k|^2)]_{HW x K}, rows (1, x_p, y_p)]         (HW x (K + 3))
    M = (A @ L^-1)[:, :K]

with p the output positions of `stn_serve.ops.base_grid.base_coordinates`. A thin-plate spline
reproduces affine maps exactly, so zero offsets give the identity grid (M @ C = the positions).
The gradient is `grad_offsets[n] = M^T @ grad_grid[n]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import output_size, require_floating, shape_text
from stn_serve.ops.base_grid import base_coordinates


def check_control_grid(control_grid: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of a control lattice, or `InvalidInputError` if it is not at least 2 x 2."""
    if len(control_grid) != 2 or any(int(v) < 2 for v in control_grid):
        raise InvalidInputError(
            f"control_grid must be (rows, cols) with rows, cols >= 2, got {tuple(control_grid)}"
        )
    return int(control_grid[0]), int(control_grid[1])


def check_offsets(
    offsets: torch.Tensor, size: Sequence[int], control_grid: Sequence[int]
) -> tuple[int, int]:
    """Raise `InvalidInputError` unless offsets is floating [N, rows * cols, 2] and size is
    (N, C, H, W); return (H, W)."""
    rows, cols = check_control_grid(control_grid)
    require_floating("offsets", offsets)
    if offsets.dim() != 3 or tuple(offsets.shape[1:]) != (rows * cols, 2):
        raise InvalidInputError(
            f"offsets must be [N, {rows * cols}, 2] for a {rows}x{cols} control grid, "
            f"got {shape_text(offsets.shape)}"
        )
    return output_size(size, offsets.shape[0])


def tps_control_points(control_grid: Sequence[int]) -> torch.Tensor:
    """Tensor[rows * cols, 2] (float64): the control points (x, y), x fastest."""
    rows, cols = check_control_grid(control_grid)
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, rows, dtype=torch.float64),
        torch.linspace(-1, 1, cols, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack((xs.flatten(), ys.flatten()), dim=1)


def _radial_basis(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Tensor[P, K]: U(|p - c|^2) = r2 * log(r2), 0 where the points coincide."""
    squared = torch.cdist(points, centres).square()
    return squared * torch.log(torch.where(squared > 0, squared, torch.ones_like(squared)))


#: M per (height, width, align_corners, rows, cols); only real tensors are kept.
_KERNEL_MATRICES: dict[tuple[int, int, bool, int, int], torch.Tensor] = {}


def _kernel_matrix(
    height: int, width: int, align_corners: bool, rows: int, cols: int
) -> torch.Tensor:
    key = (height, width, align_corners, rows, cols)
    if key not in _KERNEL_MATRICES:
        matrix = _solve_kernel_matrix(*key)
        # Under tracing (torch.export, fake tensors) the maths yields a FakeTensor; caching it
        # would hand fake values to every later eager call in the process.
        if type(matrix) is not torch.Tensor:
            return matrix
        _KERNEL_MATRICES[key] = matrix
    return _KERNEL_MATRICES[key]


def _solve_kernel_matrix(
    height: int, width: int, align_corners: bool, rows: int, cols: int
) -> torch.Tensor:
    control = tps_control_points((rows, cols))
    count = control.shape[0]
    affine_control = torch.cat((torch.ones(count, 1, dtype=torch.float64), control), dim=1)
    system = torch.zeros(count + 3, count + 3, dtype=torch.float64)
    system[:count, :count] = _radial_basis(control, control)
    system[:count, count:] = affine_control
    system[count:, :count] = affine_control.T
    positions = base_coordinates(height, width, align_corners, torch.float64, "cpu")[:, :2]
    affine_positions = torch.cat((torch.ones(len(positions), 1, dtype=torch.float64), positions), 1)
    design = torch.cat((_radial_basis(positions, control), affine_positions), dim=1)
    return torch.linalg.solve(system, design.T).T[:, :count].contiguous()


def tps_kernel_matrix(
    height: int, width: int, align_corners: bool, control_grid: Sequence[int]
) -> torch.Tensor:
    """Tensor[height * width, rows * cols] (float64): the constant M of the module docstring."""
    rows, cols = check_control_grid(control_grid)
    return _kernel_matrix(int(height), int(width), bool(align_corners), rows, cols).clone()


def _constants(like: torch.Tensor, size: Sequence[int], align_corners: bool, control_grid):
    rows, cols = check_control_grid(control_grid)
    matrix = _kernel_matrix(int(size[2]), int(size[3]), bool(align_corners), rows, cols)
    control = tps_control_points((rows, cols))
    return matrix.to(like), control.to(like)


def tps_grid_forward(
    offsets: torch.Tensor, size: Sequence[int], align_corners: bool, control_grid: Sequence[int]
) -> torch.Tensor:
    """Tensor[N, H, W, 2]: the thin-plate-spline grid for control-point offsets.

    Args:
        offsets (Tensor[N, K, 2]): displacements (x, y) of the K = rows * cols control points.
        size (N, C, H, W): the output size.
        align_corners (bool): as in `grid_sample`.
        control_grid (rows, cols): the control lattice.
    """
    matrix, control = _constants(offsets, size, align_corners, control_grid)
    grid = torch.matmul(matrix, control + offsets)
    return grid.view(offsets.shape[0], size[2], size[3], 2)


def tps_grid_backward(
    grad_grid: torch.Tensor, size: Sequence[int], align_corners: bool, control_grid: Sequence[int]
) -> torch.Tensor:
    """Tensor[N, K, 2]: gradient with respect to the offsets of `tps_grid_forward`.

    Args:
        grad_grid (Tensor[N, H, W, 2]): gradient with respect to the grid.
        size, align_corners, control_grid: the forward's arguments.
    """
    matrix, _ = _constants(grad_grid, size, align_corners, control_grid)
    points = matrix.shape[0]
    return torch.matmul(matrix.T, grad_grid.reshape(grad_grid.shape[0], points, 2))


@torch.library.custom_op("stn::tps_grid", mutates_args=())
def _tps_grid_op(
    offsets: torch.Tensor, size: list[int], align_corners: bool, control_grid: list[int]
) -> torch.Tensor:
    check_offsets(offsets, size, control_grid)
    return tps_grid_forward(offsets, size, align_corners, control_grid)


@_tps_grid_op.register_fake
def _(offsets, size, align_corners, control_grid):
    height, width = check_offsets(offsets, size, control_grid)
    return offsets.new_empty(offsets.shape[0], height, width, 2)


# The backward is an op of its own so that compiled graphs call it instead of tracing it: its
# constant M is cached as a real tensor, which tracing with fake tensors cannot use.
@torch.library.custom_op("stn::tps_grid_backward", mutates_args=())
def _tps_grid_backward_op(
    grad_grid: torch.Tensor, size: list[int], align_corners: bool, control_grid: list[int]
) -> torch.Tensor:
    return tps_grid_backward(grad_grid, size, align_corners, control_grid)


@_tps_grid_backward_op.register_fake
def _(grad_grid, size, align_corners, control_grid):
    rows, cols = check_control_grid(control_grid)
    return grad_grid.new_empty(grad_grid.shape[0], rows * cols, 2)


def _setup_context(ctx, inputs, output):
    _, size, align_corners, control_grid = inputs
    ctx.size = size
    ctx.align_corners = align_corners
    ctx.control_grid = control_grid


def _backward(ctx, grad_grid):
    grad = torch.ops.stn.tps_grid_backward(grad_grid, ctx.size, ctx.align_corners, ctx.control_grid)
    return grad, None, None, None


_tps_grid_op.register_autograd(_backward, setup_context=_setup_context)


def tps_grid(
    offsets: torch.Tensor,
    size: Sequence[int],
    align_corners: bool = False,
    control_grid: Sequence[int] = (4, 4),
) -> torch.Tensor:
    """Thin-plate-spline sampling grid from control-point offsets.

    Runs `torch.ops.stn.tps_grid(offsets, size, align_corners, control_grid)`; see the module
    docstring for the formula.

    Args:
        offsets (Tensor[N, rows * cols, 2]): displacements (x, y) of the control points in
            [-1, 1] coordinates; zeros give the identity grid.
        size (N, C, H, W): the output size; N must equal the offsets' batch.
        align_corners (bool): as in `grid_sample` (default False).
        control_grid (rows, cols): the control lattice (default (4, 4), K = 16).

    Returns:
        Tensor[N, H, W, 2]

    Raises:
        InvalidInputError (a ValueError): offsets not floating [N, rows * cols, 2], size not
            (N, C, H, W), or a control grid smaller than 2 x 2.
    """
    return torch.ops.stn.tps_grid(offsets, list(size), align_corners, list(control_grid))
