"""Batched geometric warps the distortions are made of: sampling grids and pasting into canvases.

Coordinates follow `torch.nn.functional.affine_grid` with align_corners=False: x and y run from -1
(left/top edge) to +1 (right/bottom edge). These are data-augmentation helpers built on torch's own
sampler; the model's hand-written layer lives in `stn_serve.ops`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample `images` at `grid`, zeros outside.

    Args:
        images (Tensor[N, C, H, W]): pixels in [0, 1].
        grid (Tensor[N, H', W', 2]): normalised (x, y) input coordinates per output pixel.

    Returns:
        Tensor[N, C, H', W']: in [0, 1] (bilinear weights are convex; the clamp only removes
        rounding error).
    """
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


def similarity_matrix(
    angle: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
) -> torch.Tensor:
    """Affine matrices that place an input image, rotated and scaled, into an output canvas.

    The input's centre lands `shift` pixels from the canvas centre, its content rotated by
    `angle` and scaled by `scale`; sizes may differ (the canvas may be larger than the image).

    Args:
        angle (Tensor[N]): rotation in radians.
        scale (Tensor[N]): > 0, output pixels per input pixel.
        shift (Tensor[N, 2]): (x, y) offset of the image centre from the canvas centre, pixels.
        in_size ((int, int)): input (H, W).
        out_size ((int, int)): canvas (H', W').

    Returns:
        Tensor[N, 2, 3]: the matrix for `affine_grid(matrix, (N, C, H', W'))`, mapping canvas
        coordinates to input coordinates.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    # The sampling grid needs the inverse map canvas -> input: rotate by -angle, divide by scale.
    inverse_rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    to_input = torch.diag(torch.tensor([2.0 / in_size[1], 2.0 / in_size[0]], dtype=angle.dtype))
    from_canvas = torch.diag(
        torch.tensor([out_size[1] / 2.0, out_size[0] / 2.0], dtype=angle.dtype)
    )
    linear = to_input @ inverse_rotation / scale.view(-1, 1, 1)  # (N, 2, 2), canvas px -> input
    matrix = linear @ from_canvas
    offset = -(linear @ shift.unsqueeze(-1))  # (N, 2, 1)
    return torch.cat([matrix, offset], dim=-1)


def affine_warp(
    images: torch.Tensor, matrix: torch.Tensor, out_size: tuple[int, int]
) -> torch.Tensor:
    """Warp images (Tensor[N, C, H, W]) by matrix (Tensor[N, 2, 3]) into Tensor[N, C, *out_size]."""
    n, c = images.shape[:2]
    grid = F.affine_grid(matrix.to(images), [n, c, *out_size], align_corners=False)
    return sample(images, grid)


def identity_grid(
    n: int, size: tuple[int, int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Tensor[N, H, W, 2]: the normalised (x, y) centre of every pixel of an (H, W) image."""
    matrix = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype).expand(n, 2, 3)
    return F.affine_grid(matrix, [n, 1, *size], align_corners=False)


def homography_from_corners(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Solve for the projective maps that send four points each onto four others.

    Args:
        src (Tensor[N, 4, 2]): (x, y) of four points, no three collinear.
        dst (Tensor[N, 4, 2]): where each goes.

    Returns:
        Tensor[N, 3, 3]: H with H[2, 2] = 1 and H·(x, y, 1) ∝ (u, v, 1).
    """
    x, y = src.double().unbind(-1)  # (N, 4)
    u, v = dst.double().unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    system = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    h = torch.linalg.solve(system, torch.cat([u, v], dim=1))  # (N, 8)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3).to(src.dtype)


def projective_grid(homography: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Apply Tensor[N, 3, 3] homographies to every output pixel: Tensor[N, H, W, 2] input coords."""
    base = identity_grid(homography.shape[0], size, homography.dtype)  # (N, H, W, 2)
    homogeneous = torch.cat([base, torch.ones_like(base[..., :1])], dim=-1)
    mapped = torch.einsum("nij,nhwj->nhwi", homography, homogeneous)
    return mapped[..., :2] / mapped[..., 2:]


def gaussian_smooth(fields: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each plane of Tensor[N, C, H, W] with a Gaussian of std `sigma` pixels (edges repeated).

    Separable, each pass one matrix product: far faster on CPU than a 1-channel convolution over
    tens of thousands of small planes.
    """
    h, w = fields.shape[-2:]
    rows = _smoothing_matrix(h, sigma, fields.dtype, fields.device)  # (H, H)
    cols = _smoothing_matrix(w, sigma, fields.dtype, fields.device)  # (W, W)
    return rows @ fields @ cols.T


def _smoothing_matrix(length: int, sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    """Tensor[L, L] M with (M @ v)[i] = Σ_t g(t) v[clamp(i + t)], g a normalised Gaussian."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    positions = torch.arange(length, device=device)
    # Clamping the neighbour index repeats the edge pixel, like replicate padding.
    neighbours = (positions[:, None] + taps.long()[None, :]).clamp(0, length - 1)  # (L, 2r+1)
    matrix = torch.zeros(length, length, dtype=dtype, device=device)
    return matrix.scatter_add_(1, neighbours, kernel.expand(length, -1).contiguous())


def displacement_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Per-pixel (dx, dy) offsets in pixels, Tensor[N, 2, H, W], as a grid Tensor[N, H, W, 2]."""
    _, _, h, w = displacement.shape
    to_normalised = torch.tensor(
        [2.0 / w, 2.0 / h], dtype=displacement.dtype, device=displacement.device
    )
    base = identity_grid(1, (h, w), displacement.dtype).to(displacement.device)  # (1, H, W, 2)
    return torch.addcmul(base, displacement.permute(0, 2, 3, 1), to_normalised)


def paste_max(
    canvas: torch.Tensor, patches: torch.Tensor, top: torch.Tensor, left: torch.Tensor
) -> torch.Tensor:
    """Paste patches into canvases in place, keeping the brighter pixel where they overlap.

    Args:
        canvas (Tensor[N, C, H, W]): modified in place and returned.
        patches (Tensor[N, K, C, h, w]): K patches per canvas.
        top (Tensor[N, K]), left (Tensor[N, K]): int64 pixel position of each patch's top-left
            corner; every patch must lie wholly inside its canvas.

    Returns:
        Tensor[N, C, H, W]: `canvas`.
    """
    n, k, c, h, w = patches.shape
    width = canvas.shape[-1]
    rows = top.view(n, k, 1, 1) + torch.arange(h, device=canvas.device).view(1, 1, h, 1)
    cols = left.view(n, k, 1, 1) + torch.arange(w, device=canvas.device).view(1, 1, 1, w)
    index = (rows * width + cols).reshape(n, 1, k * h * w).expand(n, c, k * h * w)
    values = patches.permute(0, 2, 1, 3, 4).reshape(n, c, k * h * w)
    canvas.view(n, c, -1).scatter_reduce_(2, index, values, reduce="amax", include_self=True)
    return canvas


def crop_patches(
    pool: torch.Tensor,
    source: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Cut patches out of a pool of images.

    Args:
        pool (Tensor[M, C, H, W]): images to cut from.
        source (Tensor[N, K]): int64 index into `pool` of each patch's image.
        top (Tensor[N, K]), left (Tensor[N, K]): int64 top-left corner of each patch in its image.
        size ((int, int)): patch (h, w).

    Returns:
        Tensor[N, K, C, h, w].
    """
    h, w = size
    rows = top[..., None, None] + torch.arange(h, device=pool.device).view(h, 1)  # (N, K, h, 1)
    cols = left[..., None, None] + torch.arange(w, device=pool.device).view(1, w)  # (N, K, 1, w)
    patches = pool.permute(0, 2, 3, 1)[source[..., None, None], rows, cols]  # (N, K, h, w, C)
    return patches.permute(0, 1, 4, 2, 3)
