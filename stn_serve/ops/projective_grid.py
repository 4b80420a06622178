"""Projective (homography) grid generator with a hand-written backward.

For output pixel (i, j) of an H x W grid, with (x_j, y_i) its position in [-1, 1] coordinates
(see `stn_serve.ops.base_grid.normalised_positions`):

    (u, v, w) = homography[n] @ (x_j, y_i, 1)
    grid[n, i, j] = (u / w, v / w)                  # (x, y) to sample from

that is `uvw = base @ homography^T` with `base` the [H * W, 3] matrix of rows (x_j, y_i, 1), x
fastest, then a division by the last column. With g = grad_grid at a point and p = (x_j, y_i, 1):
d/d homography[n, 0] += g_x / w * p, d/d homography[n, 1] += g_y / w * p and
d/d homography[n, 2] += -(g_x * u + g_y * v) / w^2 * p. Points where w is 0 (the horizon of the
projection) give infinite coordinates; the transform family keeps w near 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import output_size, require_floating, shape_text
from stn_serve.ops.base_grid import base_coordinates


def check_homography(homography: torch.Tensor, size: Sequence[int]) -> tuple[int, int]:
    """Raise `InvalidInputError` unless homography is floating [N, 3, 3] and size is
    (N, C, H, W); return (H, W)."""
    require_floating("homography", homography)
    if homography.dim() != 3 or tuple(homography.shape[1:]) != (3, 3):
        raise InvalidInputError(f"homography must be [N, 3, 3], got {shape_text(homography.shape)}")
    return output_size(size, homography.shape[0])


def _projected(homography: torch.Tensor, size: Sequence[int], align_corners: bool):
    """base (Tensor[H * W, 3]), the grid (Tensor[N, H * W, 2]) and 1 / w (Tensor[N, H * W, 1])."""
    base = base_coordinates(size[2], size[3], align_corners, homography.dtype, homography.device)
    uvw = torch.matmul(base, homography.transpose(1, 2))
    inverse_w = 1.0 / uvw[..., 2:]
    return base, uvw[..., :2] * inverse_w, inverse_w


def projective_grid_forward(
    homography: torch.Tensor, size: Sequence[int], align_corners: bool
) -> torch.Tensor:
    """Tensor[N, H, W, 2]: the points `homography` maps the output lattice of `size` to.

    Args:
        homography (Tensor[N, 3, 3]): projective maps from output to input [-1, 1] coordinates.
        size (N, C, H, W): the output size.
        align_corners (bool): as in `grid_sample`.
    """
    _, grid, _ = _projected(homography, size, align_corners)
    return grid.view(homography.shape[0], size[2], size[3], 2)


def projective_grid_backward(
    grad_grid: torch.Tensor, homography: torch.Tensor, size: Sequence[int], align_corners: bool
) -> torch.Tensor:
    """Tensor[N, 3, 3]: gradient with respect to the homography of `projective_grid_forward`.

    Args:
        grad_grid (Tensor[N, H, W, 2]): gradient with respect to the grid.
        homography (Tensor[N, 3, 3]), size (N, C, H, W), align_corners (bool): the forward's
            arguments.
    """
    base, grid, inverse_w = _projected(homography, size, align_corners)
    grad = grad_grid.reshape(grid.shape) * inverse_w
    grad_w = -(grad * grid).sum(-1, keepdim=True)
    return torch.matmul(torch.cat((grad, grad_w), dim=-1).transpose(1, 2), base)


@torch.library.custom_op("stn::projective_grid", mutates_args=())
def _projective_grid_op(
    homography: torch.Tensor, size: list[int], align_corners: bool
) -> torch.Tensor:
    check_homography(homography, size)
    return projective_grid_forward(homography, size, align_corners)


@_projective_grid_op.register_fake
def _(homography, size, align_corners):
    height, width = check_homography(homography, size)
    return homography.new_empty(homography.shape[0], height, width, 2)


def _setup_context(ctx, inputs, output):
    homography, size, align_corners = inputs
    ctx.save_for_backward(homography)
    ctx.size = size
    ctx.align_corners = align_corners


def _backward(ctx, grad_grid):
    (homography,) = ctx.saved_tensors
    grad = projective_grid_backward(grad_grid, homography, ctx.size, ctx.align_corners)
    return grad, None, None


_projective_grid_op.register_autograd(_backward, setup_context=_setup_context)


def projective_grid(
    homography: torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> torch.Tensor:
    """Sampling grid of projective maps (homographies).

    Runs `torch.ops.stn.projective_grid`; see the module docstring for the formula. The
    identity homography gives the grid of `affine_grid` with the identity matrix.

    Args:
        homography (Tensor[N, 3, 3]): projective maps from output to input [-1, 1] coordinates.
        size (N, C, H, W): the output size; N must equal the homography's batch.
        align_corners (bool): as in `grid_sample` (default False).

    Returns:
        Tensor[N, H, W, 2]

    Raises:
        InvalidInputError (a ValueError): homography not floating [N, 3, 3], or size not
            (N, C, H, W).
    """
    return torch.ops.stn.projective_grid(homography, list(size), align_corners)
