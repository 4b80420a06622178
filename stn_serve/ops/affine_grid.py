"""Affine grid generator with a hand-written backward.

Matches `torch.nn.functional.affine_grid` for 4-D sizes without calling torch's affine-grid
kernel. For output pixel (i, j) of an H x W grid, with x_j, y_i its position in [-1, 1]
coordinates (see `stn_serve.ops.base_grid.normalised_positions`):

    grid[n, i, j] = matrix[n] @ (x_j, y_i, 1)       # (x, y) to sample from

so `grid = base @ matrix^T` with `base` the [H * W, 3] matrix of rows (x_j, y_i, 1), x fastest,
and the gradient is `grad_matrix[n] = grad_grid[n]^T @ base` ([2, H * W] @ [H * W, 3]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import output_size, require_floating, shape_text
from stn_serve.ops.base_grid import base_coordinates


def check_matrix(matrix: torch.Tensor, size: Sequence[int]) -> tuple[int, int]:
    """Raise `InvalidInputError` unless matrix is floating [N, 2, 3] and size is (N, C, H, W);
    return (H, W)."""
    require_floating("matrix", matrix)
    if matrix.dim() != 3 or tuple(matrix.shape[1:]) != (2, 3):
        raise InvalidInputError(f"matrix must be [N, 2, 3], got {shape_text(matrix.shape)}")
    return output_size(size, matrix.shape[0])


def affine_grid_forward(
    matrix: torch.Tensor, size: Sequence[int], align_corners: bool
) -> torch.Tensor:
    """Tensor[N, H, W, 2]: the points `matrix` maps the output lattice of `size` to.

    Args:
        matrix (Tensor[N, 2, 3]): affine maps from output to input [-1, 1] coordinates.
        size (N, C, H, W): the output size.
        align_corners (bool): as in `grid_sample`.
    """
    batch, height, width = matrix.shape[0], size[2], size[3]
    base = base_coordinates(height, width, align_corners, matrix.dtype, matrix.device)
    # (H * W, 3) @ (N, 3, 2): (x, y) last straight away, with no transposing copy.
    grid = torch.matmul(base, matrix.transpose(1, 2))
    return grid.view(batch, height, width, 2)


def affine_grid_backward(
    grad_grid: torch.Tensor, size: Sequence[int], align_corners: bool
) -> torch.Tensor:
    """Tensor[N, 2, 3]: gradient with respect to matrix of `affine_grid_forward`.

    Args:
        grad_grid (Tensor[N, H, W, 2]): gradient with respect to the grid.
        size (N, C, H, W), align_corners (bool): the forward's arguments.
    """
    batch, height, width = grad_grid.shape[0], size[2], size[3]
    base = base_coordinates(height, width, align_corners, grad_grid.dtype, grad_grid.device)
    # (N, 2, H * W) @ (H * W, 3), reading the gradient through a transposed view.
    return torch.matmul(grad_grid.reshape(batch, height * width, 2).transpose(1, 2), base)


@torch.library.custom_op("stn::affine_grid", mutates_args=())
def _affine_grid_op(matrix: torch.Tensor, size: list[int], align_corners: bool) -> torch.Tensor:
    check_matrix(matrix, size)
    return affine_grid_forward(matrix, size, align_corners)


@_affine_grid_op.register_fake
def _(matrix, size, align_corners):
    height, width = check_matrix(matrix, size)
    return matrix.new_empty(matrix.shape[0], height, width, 2)


def _setup_context(ctx, inputs, output):
    _, size, align_corners = inputs
    ctx.size = size
    ctx.align_corners = align_corners


def _backward(ctx, grad_grid):
    return affine_grid_backward(grad_grid, ctx.size, ctx.align_corners), None, None


_affine_grid_op.register_autograd(_backward, setup_context=_setup_context)


def affine_grid(
    matrix: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Sampling grid of affine maps, like `torch.nn.functional.affine_grid` for 4-D sizes.

    Runs `torch.ops.stn.affine_grid`; see the module docstring for the formula.

    Args:
        matrix (Tensor[N, 2, 3]): affine maps from output to input [-1, 1] coordinates.
        size (N, C, H, W): the output size; N must equal matrix's batch.
        align_corners (bool): as in `grid_sample` (default False).

    Returns:
        Tensor[N, H, W, 2]

    Raises:
        InvalidInputError (a ValueError): matrix not floating [N, 2, 3], or size not (N, C, H, W).
    """
    return torch.ops.stn.affine_grid(matrix, list(size), align_corners)
