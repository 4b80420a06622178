"""How canonical the crops are: the spread of the pose each test image ends up in.

A distortion D takes a source image (an undistorted digit) into the canvas the model sees; the
model's sampling transform P takes the crop into that canvas. Both are maps of coordinates in
the sampling direction (output -> input), so the composite

    C = D ∘ P : crop coordinates -> source coordinates

says where each crop pixel reads the undistorted source. If the spatial transformer undid every
distortion, C would be one and the same map for every image (the canonical pose, which need not
be the identity: the model may prefer digits a little smaller or tilted, as long as it is the same
for all); the spread of C across images is what it failed to undo. Without a transformer
(P = identity) the spread is that of the distortion alone, the reference.

To compare rotation, scale and position, C is expressed in pixels centred on each image
(x_px = x * W / 2, so non-square images keep their angles) and linearised at the crop's centre:
for a projective C(x) = (A x + t) / (g·x + 1) the Jacobian there is J = A - t gᵀ and the centre
lands at t. J is a 2×2 matrix; its rotation is that of the nearest similarity,
angle = atan2(J10 - J01, J00 + J11), and its log-scale is ½ ln |det J|. Across N images:

- rotation spread: the circular standard deviation sqrt(-2 ln R), R = |mean(exp(i·angle))|, in
  degrees. Uniform rotations in ±45° give about 26°; identical angles give 0.
- log-scale spread: the standard deviation of ½ ln |det J| (0.1 ≈ 10 % size changes).
- translation spread: sqrt(var(t_x) + var(t_y)) of the centre's landing point, source pixels.

The model's P comes from its grid: a least-squares affine fit of the sampling grid against the
crop's pixel centres, exact for the affine families and the best affine summary of a
projective or thin-plate-spline grid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SPREADS = ("rotation_deg", "log_scale", "translation_px")


def pixel_centres(size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Tensor[h * w, 2]: normalised (x, y) of every pixel centre of an (h, w) image, row-major."""
    h, w = size

    def axis(n: int) -> torch.Tensor:
        index = torch.arange(n, dtype=torch.float64)
        if align_corners:
            return index * (2.0 / max(n - 1, 1)) - 1.0
        return (2.0 * index + 1.0) / n - 1.0

    ys, xs = torch.meshgrid(axis(h), axis(w), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def fit_affine(grid: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """The least-squares affine map of crop coordinates onto a sampling grid.

    Args:
        grid (Tensor[N, h, w, 2]): normalised input (x, y) each crop pixel reads.
        align_corners: the grid's pixel convention.

    Returns:
        Tensor[N, 3, 3]: affine (last row 0, 0, 1), crop -> input normalised coordinates.
    """
    n, h, w, _ = grid.shape
    centres = pixel_centres((h, w), align_corners)  # (h*w, 2)
    design = torch.cat([centres, torch.ones(h * w, 1, dtype=centres.dtype)], dim=1)  # (h*w, 3)
    targets = grid.detach().double().reshape(n, h * w, 2)
    solution = torch.linalg.lstsq(design.expand(n, -1, -1), targets).solution  # (N, 3, 2)
    matrix = torch.zeros(n, 3, 3, dtype=torch.float64)
    matrix[:, :2, :] = solution.transpose(1, 2)
    matrix[:, 2, 2] = 1.0
    return matrix


def to_pixels(
    matrix: torch.Tensor, out_size: tuple[int, int], in_size: tuple[int, int]
) -> torch.Tensor:
    """Tensor[N, 3, 3] normalised map (out -> in) as a map between centred pixel coordinates."""
    (out_h, out_w), (in_h, in_w) = out_size, in_size
    to_in = torch.diag(torch.tensor([in_w / 2.0, in_h / 2.0, 1.0], dtype=torch.float64))
    from_out = torch.diag(torch.tensor([2.0 / out_w, 2.0 / out_h, 1.0], dtype=torch.float64))
    return to_in @ matrix.double() @ from_out


def linearise(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobian (Tensor[N, 2, 2]) and image of the origin (Tensor[N, 2]) of projective maps."""
    matrix = matrix / matrix[:, 2:, 2:]
    linear, shift, row = matrix[:, :2, :2], matrix[:, :2, 2], matrix[:, 2, :2]
    return linear - shift.unsqueeze(2) * row.unsqueeze(1), shift


def pose_spread(composite: torch.Tensor) -> dict[str, float]:
    """Spread of Tensor[N, 3, 3] pixel maps across images (see the module docstring)."""
    jacobian, shift = linearise(composite)
    angle = torch.atan2(
        jacobian[:, 1, 0] - jacobian[:, 0, 1], jacobian[:, 0, 0] + jacobian[:, 1, 1]
    )
    resultant = torch.complex(torch.cos(angle), torch.sin(angle)).mean().abs().clamp(max=1.0)
    log_scale = 0.5 * torch.log(torch.linalg.det(jacobian).abs().clamp(min=1e-12))
    translation = shift.var(dim=0, unbiased=False).sum().sqrt()
    return {
        "rotation_deg": math.degrees(math.sqrt(max(0.0, -2.0 * math.log(float(resultant))))),
        "log_scale": float(log_scale.std(unbiased=False)),
        "translation_px": float(translation),
    }


@torch.no_grad()
def sampling_transforms(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Tensor[N, 3, 3]: each image's affine crop -> input map, fitted to the model's grid.

    Args:
        model: an STCNN (with `.transformer`); images (Tensor[N, C, H, W]) in [0, 1].
    """
    model.eval()
    transformer = model.transformer
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        theta = model(images[start : start + batch_size].to(device)).theta
        grid = transformer.grid_generator(theta).cpu()  # (B, h, w, 2)
        parts.append(fit_affine(grid, transformer.align_corners))
    return torch.cat(parts)


def canonical_spread(
    model: nn.Module,
    images: torch.Tensor,
    poses: torch.Tensor,
    source_size: tuple[int, int],
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Pose spread of the model's crops and of the distortion alone.

    Args:
        model: an STCNN; CNN baselines (no `.transformer`) get only the distortion's spread.
        images (Tensor[N, C, H, W]): distorted images in [0, 1].
        poses (Tensor[N, 3, 3]): the distortion of each (canvas -> source, normalised).
        source_size: (h, w) of the undistorted source images.

    Returns:
        {"model": {...}, "distortion": {...}}, each with the SPREADS keys; "model" is absent
        for a model without a spatial transformer.
    """
    canvas_size = tuple(images.shape[-2:])
    spreads = {"distortion": pose_spread(to_pixels(poses, canvas_size, source_size))}
    if hasattr(model, "transformer"):
        crop_size = model.transformer.crop_size
        # Both factors in normalised coordinates; the crop's pixels scale the product.
        composite = poses.double() @ sampling_transforms(model, images, batch_size)
        spreads["model"] = pose_spread(to_pixels(composite, crop_size, source_size))
    return spreads


def format_spread(spreads: dict[str, dict[str, float]]) -> str:
    """One line: the model's spreads beside the distortion's (and the rotation ratio)."""
    reference = spreads["distortion"]
    if "model" not in spreads:
        return (
            f"pose spread of the distortion: rotation {reference['rotation_deg']:.1f}°, "
            f"log-scale {reference['log_scale']:.3f}, translation {reference['translation_px']:.2f} px"
        )
    model = spreads["model"]
    ratio = (
        model["rotation_deg"] / reference["rotation_deg"] if reference["rotation_deg"] > 0 else 0.0
    )
    return (
        f"canonical pose spread (model / distortion alone): rotation {model['rotation_deg']:.1f}° / "
        f"{reference['rotation_deg']:.1f}° ({ratio:.2f}×), log-scale {model['log_scale']:.3f} / "
        f"{reference['log_scale']:.3f}, translation {model['translation_px']:.2f} / "
        f"{reference['translation_px']:.2f} px"
    )
