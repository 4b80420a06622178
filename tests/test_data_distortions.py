"""stn_serve.data.distortions and warps: sizes, ranges, determinism, and the geometry itself."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stn_serve.data import DISTORTIONS, distort, distorted_size
from stn_serve.data import distortions as distortions_module
from stn_serve.data.warps import (
    affine_warp,
    gaussian_smooth,
    homography_from_corners,
    identity_grid,
    projective_grid,
    similarity_matrix,
)
from stn_serve.errors import InvalidInputError


def blobs(
    n: int = 6, channels: int = 1, size: tuple[int, int] = (28, 28), seed: int = 0
) -> torch.Tensor:
    """Tensor[N, C, H, W]: random bright rectangles on black, MNIST-like margins."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, channels, *size)
    h, w = size
    for i in range(n):
        top, left = torch.randint(h // 7, h // 2, (2,), generator=g).tolist()
        images[i, :, top : top + h // 3, left : left + w // 4] = (
            torch.rand(channels, 1, 1, generator=g) * 0.5 + 0.5
        )
    return images


@pytest.mark.parametrize("kind", DISTORTIONS)
@pytest.mark.parametrize("channels,size", [(1, (28, 28)), (3, (20, 24))])
def test_shape_range_and_determinism(kind, channels, size):
    images = blobs(7, channels, size)
    before = torch.get_rng_state()
    out = distort(images, kind, seed=11)
    assert torch.equal(torch.get_rng_state(), before), "distort must not touch the global RNG"
    assert out.shape == (7, channels, *distorted_size(kind, size))
    assert out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.sum() > 0, "the distortion lost every bright pixel"
    assert torch.equal(out, distort(images, kind, seed=11))
    if kind == "none":
        assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()
    else:
        assert not torch.equal(out, distort(images, kind, seed=12))


def test_paper_sizes_for_28x28():
    assert {kind: distorted_size(kind, (28, 28)) for kind in DISTORTIONS} == {
        "none": (28, 28),
        "R": (28, 28),
        "RTS": (42, 42),
        "P": (28, 28),
        "E": (28, 28),
        "TC": (60, 60),
    }


@pytest.mark.parametrize("kind", ["R", "E", "TC"])
def test_chunks_cover_every_image(monkeypatch, kind):
    monkeypatch.setattr(distortions_module, "CHUNK", 3)
    images = blobs(7)
    out = distort(images, kind, seed=5)
    assert out.shape[0] == 7
    assert torch.equal(out, distort(images, kind, seed=5))
    assert (out.flatten(1).sum(1) > 0).all()


def test_rotation_by_quarter_turn_is_rot90():
    images = blobs(2)
    matrix = similarity_matrix(
        torch.full((2,), math.pi / 2), torch.ones(2), torch.zeros(2, 2), (28, 28), (28, 28)
    )
    out = affine_warp(images, matrix, (28, 28))
    assert torch.allclose(out, torch.rot90(images, k=1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        out, torch.rot90(images, k=-1, dims=(2, 3)), atol=1e-5
    )


def test_integer_shift_places_image_exactly_in_canvas():
    images = blobs(1)
    matrix = similarity_matrix(
        torch.zeros(1), torch.ones(1), torch.tensor([[3.0, -5.0]]), (28, 28), (42, 42)
    )
    out = affine_warp(images, matrix, (42, 42))
    expected = torch.zeros(1, 1, 42, 42)
    expected[..., 7 - 5 : 7 - 5 + 28, 7 + 3 : 7 + 3 + 28] = images  # centred at +7, then shifted
    assert torch.allclose(out, expected, atol=1e-5)


def test_scale_shrinks_ink_area():
    images = torch.zeros(1, 1, 28, 28)
    images[..., 4:24, 4:24] = 1.0
    matrix = similarity_matrix(
        torch.zeros(1), torch.full((1,), 0.5), torch.zeros(1, 2), (28, 28), (28, 28)
    )
    out = affine_warp(images, matrix, (28, 28))
    assert out.sum().item() == pytest.approx(images.sum().item() * 0.25, rel=0.02)


def test_homography_maps_corners_onto_targets():
    g = torch.Generator().manual_seed(0)
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(5, 4, 2)
    dst = 0.8 * (src + 0.1 * torch.randn(5, 4, 2, generator=g))
    h = homography_from_corners(src, dst)
    mapped = torch.einsum("nij,nkj->nki", h, torch.cat([src, torch.ones(5, 4, 1)], -1))
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], dst, atol=1e-5)


def test_identity_homography_gives_identity_grid():
    h = torch.eye(3).expand(2, 3, 3)
    assert torch.allclose(projective_grid(h, (5, 7)), identity_grid(2, (5, 7)))


def conv_gaussian_smooth(fields: torch.Tensor, sigma: float) -> torch.Tensor:
    """Reference: two 1-D convolutions over edge-replicated planes."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=fields.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c, h, w = fields.shape
    planes = F.pad(fields.reshape(n * c, 1, h, w), (radius,) * 4, mode="replicate")
    planes = F.conv2d(planes, kernel.view(1, 1, 1, -1))
    return F.conv2d(planes, kernel.view(1, 1, -1, 1)).view(n, c, h, w)


@pytest.mark.parametrize("sigma,size", [(1.5, (28, 28)), (0.7, (5, 9)), (2.0, (4, 3))])
def test_gaussian_smooth_matches_convolution(sigma, size):
    fields = torch.rand(
        3, 2, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert torch.allclose(gaussian_smooth(fields, sigma), conv_gaussian_smooth(fields, sigma))


def test_elastic_with_zero_strength_is_identity(monkeypatch):
    monkeypatch.setattr(distortions_module, "ELASTIC_ALPHA", 0.0)
    images = blobs(3)
    assert torch.allclose(distort(images, "E", seed=1), images, atol=1e-6)


def test_translated_digit_is_intact_without_clutter():
    images = blobs(4)
    out = distort(images, "TC", seed=2, clutter_from=torch.zeros(3, 1, 28, 28))
    for digit, canvas in zip(images, out):
        rows = canvas[0].sum(1).nonzero().flatten()
        cols = canvas[0].sum(0).nonzero().flatten()
        window = canvas[0, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        drows = digit[0].sum(1).nonzero().flatten()
        dcols = digit[0].sum(0).nonzero().flatten()
        assert torch.equal(window, digit[0, drows[0] : drows[-1] + 1, dcols[0] : dcols[-1] + 1])


def test_clutter_comes_from_other_images():
    # Image 0 is black, image 1 is white: any light pixel in image 0's canvas is clutter from 1.
    images = torch.stack([torch.zeros(1, 28, 28), torch.ones(1, 28, 28)])
    out = distort(images, "TC", seed=3)
    lit = out[0, 0] > 0
    assert lit.any()
    assert torch.equal(out[0, 0][lit], torch.ones(int(lit.sum())))
    # Six 6×6 patches, possibly overlapping.
    assert 36 <= int(lit.sum()) <= 6 * 36


def test_clutter_pool_must_match_channels():
    with pytest.raises(
        InvalidInputError,
        match=r"clutter_from must be \[M >= 1, 1, >= 6, >= 6\].*got \[2, 3, 28, 28\]",
    ):
        distort(blobs(2), "TC", seed=0, clutter_from=torch.zeros(2, 3, 28, 28))


@pytest.mark.parametrize(
    "images,kind,message",
    [
        (
            torch.zeros(2, 1, 28, 28),
            "S",
            r"distortion must be one of none, R, RTS, P, E, TC, got 'S'",
        ),
        (
            torch.zeros(1, 28, 28),
            "R",
            r"images must be a float tensor \[N, C, H, W\], got torch.float32 \[1, 28, 28\]",
        ),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "R", r"got torch.uint8 \[2, 1, 28, 28\]"),
    ],
)
def test_bad_input_is_named(images, kind, message):
    with pytest.raises(InvalidInputError, match=message):
        distort(images, kind, seed=0)


def test_seed_must_be_an_integer():
    with pytest.raises(InvalidInputError, match=r"seed must be an integer, got 1.5"):
        distort(blobs(1), "R", seed=1.5)
    assert torch.equal(distort(blobs(1), "R", seed=np.int64(3)), distort(blobs(1), "R", seed=3))


def test_elastic_strength_is_as_documented():
    # distortions.ELASTIC_ALPHA's comment: about 0.7 px RMS per axis.
    fields = torch.rand(64, 2, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    displacement = distortions_module.ELASTIC_ALPHA * gaussian_smooth(
        fields, distortions_module.ELASTIC_SIGMA
    )
    assert 0.6 < displacement.pow(2).mean().sqrt().item() < 0.85


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", DISTORTIONS)
def test_cuda_images_give_the_cpu_result_on_the_gpu(kind):
    images = blobs(9)
    out = distort(images.cuda(), kind, seed=4)
    assert out.is_cuda
    assert torch.allclose(out.cpu(), distort(images, kind, seed=4), atol=1e-4)
