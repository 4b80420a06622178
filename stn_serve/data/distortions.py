"""The distorted-MNIST variants of the STN paper (Jaderberg et al. 2015, section 4.1), from a seed.

Each kind maps a batch Tensor[N, C, H, W] to Tensor[N, C, H', W'] with every random draw taken
from a local `torch.Generator` seeded by the caller, so the same seed always gives the same
images and no global RNG state is touched. Sizes follow the paper for 28×28 inputs and scale
with the input for other sizes (sizes below are for 28×28):

- none: a copy (28×28).
- R: rotation, uniform in ±90° (28×28).
- RTS: rotation ±45°, scale 0.7–1.2, placed at random in a 42×42 canvas.
- P: projective; the corners move by Gaussian noise (std 0.1 of the half-size), then the image is
  scaled by 0.75–1.0 (28×28).
- E: elastic; uniform(-1, 1) displacement fields smoothed by a Gaussian of σ = 1.5 px, times
  α = 6 px (28×28).
- TC: translated at random in a 60×60 canvas with 6 clutter patches of 6×6 cut from other images.

`distort_with_pose` also returns the transform each image went through, as the projective matrix
Tensor[N, 3, 3] that maps normalised output coordinates (x, y, 1) to normalised input coordinates
(up to scale), the same direction as the model's sampling transform; elastic distortions have no
global transform and report the identity. `stn_serve.train.canonical` composes it with the
model's prediction to measure how canonical the crops are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from stn_serve.contract import DISTORTIONS
from stn_serve.data.split import as_integer
from stn_serve.data.warps import (
    affine_warp,
    crop_patches,
    displacement_grid,
    gaussian_smooth,
    homography_from_corners,
    paste_max,
    projective_grid,
    sample,
    similarity_matrix,
)
from stn_serve.errors import InvalidInputError

#: The paper's sizes are for 28×28 digits; other inputs scale by their size / 28.
REFERENCE_SIZE = 28
ROTATION_DEG = 90.0
RTS_ROTATION_DEG = 45.0
RTS_SCALE = (0.7, 1.2)
RTS_CANVAS = 42
PROJECTIVE_CORNER_STD = 0.1
PROJECTIVE_SCALE = (0.75, 1.0)
ELASTIC_SIGMA = 1.5
#: Displacement strength in pixels. After the σ = 1.5 smoothing a uniform(-1, 1) field has an
#: RMS of about 0.12, so α = 6 moves pixels by about 0.7 px RMS per axis and rarely more than
#: 3 px: a visible wobble that keeps 28×28 strokes connected.
ELASTIC_ALPHA = 6.0
TC_CANVAS = 60
TC_PATCHES = 6
TC_PATCH = 6
#: Images warped at once: bounds the sampling grids' memory (60×60 grids for 60,000 images would
#: take 1.7 GB) while keeping each step a batched op.
CHUNK = 4096


def distorted_size(kind: str, size: tuple[int, int]) -> tuple[int, int]:
    """The (H', W') that `distort(images, kind, ...)` returns for (H, W) inputs.

    RTS and TC enlarge the canvas by 42/28 and 60/28 (rounded); the other kinds keep the size.
    """
    _check_kind(kind)
    factor = {"RTS": RTS_CANVAS, "TC": TC_CANVAS}.get(kind, REFERENCE_SIZE) / REFERENCE_SIZE
    return _scaled(size, factor)


class Distorted(NamedTuple):
    """images (Tensor[N, C, H', W']) and pose (Tensor[N, 3, 3]: output -> input normalised
    coordinates, projective; the identity for elastic distortions)."""

    images: torch.Tensor
    pose: torch.Tensor


def distort(
    images: torch.Tensor, kind: str, seed: int, clutter_from: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply one of the paper's distortions to every image, reproducibly.

    Args:
        images (Tensor[N, C, H, W]): float pixels in [0, 1].
        kind (str): one of DISTORTIONS.
        seed (int): seeds a local generator; the same (images, kind, seed) gives identical output.
        clutter_from (Tensor[M, C, H_c, W_c] | None): TC only (other kinds ignore it): the images
            clutter patches are cut from. Default: None, meaning each image gets patches from
            other images of `images` (from itself only when N = 1).

    Returns:
        Tensor[N, C, H', W']: a new tensor in [0, 1], (H', W') = distorted_size(kind, (H, W)).
    """
    return distort_with_pose(images, kind, seed, clutter_from).images


def distort_with_pose(
    images: torch.Tensor, kind: str, seed: int, clutter_from: torch.Tensor | None = None
) -> Distorted:
    """`distort`, and the transform each image went through (see `Distorted`)."""
    _check_kind(kind)
    _check_images("images", images)
    seed = as_integer("seed", seed)
    n = len(images)
    if kind == "none":
        return Distorted(images.clone(), _identity(n))
    if n == 0:
        empty = images.new_zeros(0, images.shape[1], *distorted_size(kind, images.shape[-2:]))
        return Distorted(empty, _identity(0))
    generator = torch.Generator().manual_seed(seed)
    if kind == "TC":
        pool = images if clutter_from is None else clutter_from
        _check_clutter(pool, images, _scaled(images.shape[-2:], TC_PATCH / REFERENCE_SIZE))
        return _chunked(
            images,
            lambda chunk, start: _translate_clutter(
                chunk, start, generator, pool, clutter_from is None
            ),
        )
    warp = _WARPS[kind]
    return _chunked(images, lambda chunk, start: warp(chunk, generator))


def _chunked(images: torch.Tensor, warp: Callable[[torch.Tensor, int], Distorted]) -> Distorted:
    parts = [warp(images[start : start + CHUNK], start) for start in range(0, len(images), CHUNK)]
    return Distorted(torch.cat([p.images for p in parts]), torch.cat([p.pose for p in parts]))


def _identity(n: int) -> torch.Tensor:
    return torch.eye(3).expand(n, 3, 3).clone()


def _projective(matrix: torch.Tensor) -> torch.Tensor:
    """Tensor[N, 2, 3] affine matrices as Tensor[N, 3, 3] (last row 0, 0, 1)."""
    last = torch.tensor([0.0, 0.0, 1.0], dtype=matrix.dtype).expand(len(matrix), 1, 3)
    return torch.cat([matrix, last], dim=1)


def _uniform(generator: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _rotate(images: torch.Tensor, generator: torch.Generator) -> Distorted:
    n, size = images.shape[0], tuple(images.shape[-2:])
    angle = _uniform(generator, n, -1.0, 1.0) * math.radians(ROTATION_DEG)
    matrix = similarity_matrix(angle, torch.ones(n), torch.zeros(n, 2), size, size)
    return Distorted(affine_warp(images, matrix, size), _projective(matrix))


def _rotate_translate_scale(images: torch.Tensor, generator: torch.Generator) -> Distorted:
    n, size = images.shape[0], tuple(images.shape[-2:])
    canvas = distorted_size("RTS", size)
    angle = _uniform(generator, n, -1.0, 1.0) * math.radians(RTS_ROTATION_DEG)
    scale = _uniform(generator, n, *RTS_SCALE)
    # Shift at most as far as keeps the scaled frame inside the canvas; the digit's own margin
    # absorbs the corners that rotation pushes out.
    room = (
        torch.tensor([canvas[1], canvas[0]]) - scale[:, None] * torch.tensor([size[1], size[0]])
    ) / 2
    shift = _uniform(generator, (n, 2), -1.0, 1.0) * room.clamp(min=0.0)
    matrix = similarity_matrix(angle, scale, shift, size, canvas)
    return Distorted(affine_warp(images, matrix, canvas), _projective(matrix))


def _project(images: torch.Tensor, generator: torch.Generator) -> Distorted:
    n, size = images.shape[0], tuple(images.shape[-2:])
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(n, 4, 2)
    # In normalised coordinates the half-size is 1, so the std is used as it is.
    noise = PROJECTIVE_CORNER_STD * torch.randn((n, 4, 2), generator=generator)
    scale = _uniform(generator, (n, 1, 1), *PROJECTIVE_SCALE)
    moved = scale * (corners + noise)
    # The sampling grid maps output pixels back to the input, so solve moved -> original.
    homography = homography_from_corners(moved, corners)
    grid = projective_grid(homography, size)
    return Distorted(sample(images, grid.to(images)), homography)


def _elastic(images: torch.Tensor, generator: torch.Generator) -> Distorted:
    n, _, h, w = images.shape
    fields = _uniform(generator, (n, 2, h, w), -1.0, 1.0)
    displacement = ELASTIC_ALPHA * gaussian_smooth(fields, ELASTIC_SIGMA)
    # Smoothed zero-mean noise: no global transform, so the pose is the identity.
    return Distorted(sample(images, displacement_grid(displacement).to(images)), _identity(n))


def _translate_clutter(
    images: torch.Tensor,
    start: int,
    generator: torch.Generator,
    pool: torch.Tensor,
    from_batch: bool,
) -> Distorted:
    n, c, h, w = images.shape
    canvas_h, canvas_w = distorted_size("TC", (h, w))
    patch_h, patch_w = _scaled((h, w), TC_PATCH / REFERENCE_SIZE)
    k, m = TC_PATCHES, pool.shape[0]
    if from_batch and m > 1:
        # Offset by 1..M-1 from the image's own index, so its clutter comes from other images.
        own = torch.arange(start, start + n).view(n, 1)
        source = (own + torch.randint(1, m, (n, k), generator=generator)) % m
    else:
        source = torch.randint(0, m, (n, k), generator=generator)
    cut_top = torch.randint(0, pool.shape[2] - patch_h + 1, (n, k), generator=generator)
    cut_left = torch.randint(0, pool.shape[3] - patch_w + 1, (n, k), generator=generator)
    put_top = torch.randint(0, canvas_h - patch_h + 1, (n, k), generator=generator)
    put_left = torch.randint(0, canvas_w - patch_w + 1, (n, k), generator=generator)
    digit_top = torch.randint(0, canvas_h - h + 1, (n, 1), generator=generator)
    digit_left = torch.randint(0, canvas_w - w + 1, (n, 1), generator=generator)

    device = images.device
    canvas = torch.zeros(n, c, canvas_h, canvas_w, dtype=images.dtype, device=device)
    patches = crop_patches(
        pool,
        source.to(pool.device),
        cut_top.to(pool.device),
        cut_left.to(pool.device),
        (patch_h, patch_w),
    )
    paste_max(canvas, patches.to(canvas), put_top.to(device), put_left.to(device))
    paste_max(canvas, images.unsqueeze(1), digit_top.to(device), digit_left.to(device))
    return Distorted(canvas, _placement(digit_top, digit_left, (h, w), (canvas_h, canvas_w)))


def _placement(
    top: torch.Tensor, left: torch.Tensor, size: tuple[int, int], canvas: tuple[int, int]
) -> torch.Tensor:
    """Tensor[N, 3, 3]: canvas -> image normalised coordinates of images pasted at (top, left).

    A canvas pixel centre px + 0.5 = (x_c + 1) W_c / 2 lies at px - left in the image, so
    x = 2 (px - left + 0.5) / w - 1 = (W_c / w) x_c + (W_c - 2 left) / w - 1; y likewise.
    """
    (h, w), (canvas_h, canvas_w) = size, canvas
    n = len(top)
    pose = _identity(n)
    pose[:, 0, 0], pose[:, 1, 1] = canvas_w / w, canvas_h / h
    pose[:, 0, 2] = (canvas_w - 2 * left.view(n).float()) / w - 1
    pose[:, 1, 2] = (canvas_h - 2 * top.view(n).float()) / h - 1
    return pose


_WARPS: dict[str, Callable[[torch.Tensor, torch.Generator], Distorted]] = {
    "R": _rotate,
    "RTS": _rotate_translate_scale,
    "P": _project,
    "E": _elastic,
}


def _scaled(size, factor: float) -> tuple[int, int]:
    return tuple(max(1, round(s * factor)) for s in size)


def _check_kind(kind: str) -> None:
    if kind not in DISTORTIONS:
        raise InvalidInputError(f"distortion must be one of {', '.join(DISTORTIONS)}, got {kind!r}")


def _check_images(name: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = (
            f"{images.dtype} {list(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise InvalidInputError(f"{name} must be a float tensor [N, C, H, W], got {got}")


def _check_clutter(pool: torch.Tensor, images: torch.Tensor, patch: tuple[int, int]) -> None:
    _check_images("clutter_from", pool)
    if (
        pool.shape[0] == 0
        or pool.shape[1] != images.shape[1]
        or pool.shape[2] < patch[0]
        or pool.shape[3] < patch[1]
    ):
        raise InvalidInputError(
            f"clutter_from must be [M >= 1, {images.shape[1]}, >= {patch[0]}, >= {patch[1]}] "
            f"(the images' channels, room for a {patch[0]}×{patch[1]} patch), "
            f"got {list(pool.shape)}"
        )
