"""Distortion poses, the canonical pose spread and the pose-consistency loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stn_serve.data import distort_with_pose, load_split
from stn_serve.models import ModelConfig, build_model
from stn_serve.train.canonical import (
    canonical_spread,
    fit_affine,
    pixel_centres,
    pose_spread,
    to_pixels,
)
from stn_serve.train.losses import pose_consistency, source_points


@pytest.fixture(scope="module")
def digits():
    return load_split("digits", "test").images[:64]


def grid_of(pose: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Tensor[N, h, w, 2]: each pixel centre of an (h, w) image mapped through Tensor[N, 3, 3]."""
    centres = pixel_centres(size, align_corners=False).float()  # (hw, 2)
    homogeneous = torch.cat([centres, torch.ones(len(centres), 1)], dim=1)
    mapped = homogeneous @ pose.float().transpose(1, 2)
    return (mapped[..., :2] / mapped[..., 2:]).reshape(len(pose), *size, 2)


@pytest.mark.parametrize("kind", ["R", "RTS", "P", "TC", "E", "none"])
def test_the_pose_is_the_transform_the_images_went_through(digits, kind):
    """Sampling the source through the returned pose redraws the distorted image (E's local
    wobble aside, which has no global transform)."""
    clutter = torch.zeros(2, 1, 28, 28) if kind == "TC" else None
    distorted = distort_with_pose(digits, kind, seed=3, clutter_from=clutter)
    assert distorted.pose.shape == (len(digits), 3, 3)
    redrawn = F.grid_sample(
        digits, grid_of(distorted.pose, distorted.images.shape[-2:]), align_corners=False
    )
    error = (redrawn - distorted.images).abs().mean().item()
    assert error < (0.05 if kind == "E" else 1e-3), error


def test_uniform_45_degree_rotations_spread_about_26_degrees(digits):
    distorted = distort_with_pose(digits.repeat(16, 1, 1, 1), "RTS", seed=0)
    spread = pose_spread(to_pixels(distorted.pose, (42, 42), (28, 28)))
    # Circular std of uniform(-45°, 45°): sqrt(-2 ln(sin(π/4) / (π/4))) = 26.3°.
    assert spread["rotation_deg"] == pytest.approx(26.3, abs=1.5)
    assert spread["log_scale"] > 0.1 and spread["translation_px"] > 3


def test_undoing_every_distortion_gives_zero_spread(digits):
    pose = distort_with_pose(digits, "RTS", seed=1).pose.double()
    canonical = torch.tensor([[0.8, -0.3, 0.1], [0.3, 0.8, -0.2], [0.0, 0.0, 1.0]]).double()
    # A model that predicted P_i = D_i⁻¹ · K for one K puts every image in pose K.
    predicted = torch.linalg.inv(pose) @ canonical
    spread = pose_spread(to_pixels(pose @ predicted, (28, 28), (28, 28)))
    assert all(value < 1e-6 for value in spread.values()), spread


def test_fit_affine_recovers_an_affine_grid():
    matrix = torch.tensor([[[0.7, -0.2, 0.1], [0.25, 0.9, -0.3]]])
    grid = F.affine_grid(matrix, [1, 1, 12, 20], align_corners=False)
    fitted = fit_affine(grid, align_corners=False)
    assert torch.allclose(fitted[:, :2].float(), matrix, atol=1e-5)
    corners = F.affine_grid(matrix, [1, 1, 12, 20], align_corners=True)
    assert torch.allclose(fit_affine(corners, align_corners=True)[:, :2].float(), matrix, atol=1e-5)


def test_an_untrained_model_keeps_the_distortions_spread(digits):
    distorted = distort_with_pose(digits, "RTS", seed=2)
    model = build_model(ModelConfig(input_size=(42, 42), crop_size=(28, 28), depth=3))
    spreads = canonical_spread(model, distorted.images, distorted.pose, (28, 28))
    # The identity start samples the whole canvas: same rotation and scale spread as the data.
    assert spreads["model"]["rotation_deg"] == pytest.approx(
        spreads["distortion"]["rotation_deg"], rel=1e-3
    )
    assert spreads["model"]["log_scale"] == pytest.approx(
        spreads["distortion"]["log_scale"], rel=1e-3
    )
    baseline = build_model(ModelConfig(arch="cnn", input_size=(42, 42)))
    assert set(canonical_spread(baseline, distorted.images, distorted.pose, (28, 28))) == {
        "distortion"
    }


def test_pose_consistency_is_zero_only_when_the_pose_is_undone(digits):
    pose = distort_with_pose(digits[:8], "RTS", seed=4).pose.float()
    size = (28, 28)
    inverse = torch.linalg.inv(pose)
    undone = grid_of(inverse, size)  # reads every image in the source's own pose
    assert pose_consistency(undone, pose).item() < 1e-8
    assert torch.allclose(source_points(undone, pose)[0], source_points(undone, pose)[5], atol=1e-5)
    identity = grid_of(torch.eye(3).expand(8, 3, 3), size)
    assert pose_consistency(identity, pose).item() > 0.05


def test_pose_consistency_has_gradients_toward_the_canonical_pose(digits):
    pose = distort_with_pose(digits[:8], "R", seed=5).pose.float()
    angle = torch.zeros(8, requires_grad=True)
    rotation = torch.stack(
        [
            torch.stack([angle.cos(), -angle.sin(), torch.zeros(8)], -1),
            torch.stack([angle.sin(), angle.cos(), torch.zeros(8)], -1),
        ],
        1,
    )
    grid = F.affine_grid(rotation, [8, 1, 28, 28], align_corners=False)
    pose_consistency(grid, pose).backward()
    # Descending the gradient turns each crop against its image's rotation.
    applied = torch.atan2(pose[:, 1, 0], pose[:, 0, 0])
    step = -angle.grad
    agree = torch.sign(step) == torch.sign(-(applied - applied.mean()))
    assert agree.float().mean() >= 0.75, (step, applied)
    assert math.isfinite(float(angle.grad.abs().sum()))
