"""Projective and thin-plate-spline grids, and the transform families of `ops.transforms`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stn_serve.contract import TRANSFORMS
from stn_serve.errors import InvalidInputError
from stn_serve.ops import (
    make_transform,
    projective_grid,
    tps_control_points,
    tps_grid,
    tps_kernel_matrix,
)

ALIGN = [False, True]


def identity_grid(batch, height, width, align_corners, dtype=torch.float64):
    matrix = torch.eye(2, 3, dtype=dtype).expand(batch, 2, 3)
    return F.affine_grid(matrix, [batch, 1, height, width], align_corners=align_corners)


@pytest.mark.parametrize("align_corners", ALIGN)
def test_projective_grid_with_affine_homography_is_the_affine_grid(align_corners):
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(3, 2, 3, generator=generator, dtype=torch.float64)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(3, 1, 3)
    homography = torch.cat((matrix, bottom), dim=1)
    torch.testing.assert_close(
        projective_grid(homography, (3, 1, 5, 7), align_corners),
        F.affine_grid(matrix, [3, 1, 5, 7], align_corners=align_corners),
    )


def test_projective_grid_divides_by_the_third_coordinate():
    # homography [[1, 0, 0], [0, 1, 0], [0.5, 0, 1]]: (x, y) -> (x, y) / (0.5 x + 1).
    # With align_corners=True a 1 x 3 grid has x = -1, 0, 1 and y = 0:
    # -1 / 0.5 = -2, 0 / 1 = 0, 1 / 1.5 = 2 / 3.
    homography = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 1.0]]])
    grid = projective_grid(homography, (1, 1, 1, 3), align_corners=True)
    expected = torch.tensor([[[[-2.0, 0.0], [0.0, 0.0], [2.0 / 3.0, 0.0]]]])
    torch.testing.assert_close(grid, expected)


@pytest.mark.parametrize("align_corners", ALIGN)
def test_projective_grid_gradcheck(align_corners):
    generator = torch.Generator().manual_seed(1)
    homography = torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(
        2, 3, 3, generator=generator, dtype=torch.float64
    )
    homography.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h: projective_grid(h, (2, 1, 4, 3), align_corners), (homography,)
    )


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("control_grid", [(4, 4), (2, 3)])
def test_tps_with_zero_offsets_is_the_identity_grid(control_grid, align_corners):
    count = control_grid[0] * control_grid[1]
    offsets = torch.zeros(2, count, 2, dtype=torch.float64)
    torch.testing.assert_close(
        tps_grid(offsets, (2, 1, 6, 5), align_corners, control_grid),
        identity_grid(2, 6, 5, align_corners),
    )


def test_tps_reproduces_an_affine_map_of_its_control_points():
    matrix = torch.tensor([[[0.8, -0.3, 0.1], [0.2, 1.1, -0.2]]], dtype=torch.float64)
    control = tps_control_points((4, 4))
    moved = control @ matrix[0, :, :2].T + matrix[0, :, 2]
    grid = tps_grid((moved - control).unsqueeze(0), (1, 1, 7, 6))
    torch.testing.assert_close(grid, F.affine_grid(matrix, [1, 1, 7, 6], align_corners=False))


def test_tps_passes_through_its_control_points():
    # With align_corners=True and a 4 x 4 output, the output positions are the control points,
    # so the grid there is exactly where the control points were moved to.
    generator = torch.Generator().manual_seed(2)
    offsets = 0.1 * torch.randn(1, 16, 2, generator=generator, dtype=torch.float64)
    grid = tps_grid(offsets, (1, 1, 4, 4), align_corners=True)
    torch.testing.assert_close(grid.view(16, 2), tps_control_points((4, 4)) + offsets[0])


def test_tps_kernel_matrix_is_the_documented_constant():
    matrix = tps_kernel_matrix(5, 4, False, (4, 4))
    assert matrix.shape == (20, 16) and matrix.dtype == torch.float64
    # Rows sum to 1 (a constant shift of all control points shifts every point equally).
    torch.testing.assert_close(matrix.sum(1), torch.ones(20, dtype=torch.float64))
    matrix.zero_()
    assert tps_kernel_matrix(5, 4, False, (4, 4)).abs().sum() > 0


@pytest.mark.parametrize("align_corners", ALIGN)
def test_tps_grid_gradcheck(align_corners):
    generator = torch.Generator().manual_seed(3)
    offsets = 0.1 * torch.randn(2, 6, 2, generator=generator, dtype=torch.float64)
    offsets.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda o: tps_grid(o, (2, 1, 3, 4), align_corners, (2, 3)), (offsets,)
    )


def _random_params(name, batch, generator):
    transform = make_transform(name, (5, 6))
    noise = 0.2 * torch.randn(batch, transform.num_params, generator=generator, dtype=torch.float64)
    return transform.identity_params().double() + noise


EXPECTED_PARAMS = {
    "translation": 2,
    "attention": 3,
    "similarity": 4,
    "affine": 6,
    "projective": 8,
    "tps": 32,
}


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_identity_params_give_the_identity_grid(name, align_corners):
    transform = make_transform(name, (5, 6), align_corners=align_corners)
    assert transform.num_params == EXPECTED_PARAMS[name]
    params = transform.identity_params()
    assert params.shape == (transform.num_params,)
    torch.testing.assert_close(
        transform(params.double().expand(3, -1)), identity_grid(3, 5, 6, align_corners)
    )


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_gradcheck(name):
    generator = torch.Generator().manual_seed(4)
    transform = make_transform(name, (3, 4), align_corners=False)
    params = _random_params(name, 2, generator)[:, : transform.num_params].requires_grad_()
    assert torch.autograd.gradcheck(transform, (params,))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_gradient_matches_native_composition(name):
    # The same transform built on torch's affine_grid (or plain tensor maths for projective and
    # tps) must give the same grid and the same parameter gradient.
    generator = torch.Generator().manual_seed(5)
    transform = make_transform(name, (5, 6))
    params = _random_params(name, 3, generator).requires_grad_()
    grad_grid = torch.randn(3, 5, 6, 2, generator=generator, dtype=torch.float64)
    reference_params = params.detach().clone().requires_grad_()
    reference = _reference_grid(name, reference_params, transform)
    grid = transform(params)
    torch.testing.assert_close(grid, reference)
    (grad,) = torch.autograd.grad(grid, params, grad_grid)
    (reference_grad,) = torch.autograd.grad(reference, reference_params, grad_grid)
    torch.testing.assert_close(grad, reference_grad)


def _reference_grid(name, params, transform):
    batch = params.shape[0]
    if name == "projective":
        homography = torch.cat((params, torch.ones(batch, 1, dtype=params.dtype)), 1).view(-1, 3, 3)
        base = identity_grid(batch, 5, 6, False).reshape(batch, -1, 2)
        ones = torch.ones(batch, base.shape[1], 1, dtype=params.dtype)
        uvw = torch.cat((base, ones), -1) @ homography.transpose(1, 2)
        return (uvw[..., :2] / uvw[..., 2:]).view(batch, 5, 6, 2)
    if name == "tps":
        matrix = tps_kernel_matrix(5, 6, False, (4, 4))
        offsets = params.view(batch, 16, 2)
        return (matrix @ (tps_control_points((4, 4)) + offsets)).view(batch, 5, 6, 2)
    return F.affine_grid(_reference_matrix(name, params), [batch, 1, 5, 6], align_corners=False)


def _reference_matrix(name, params):
    one = torch.ones_like(params[:, 0])
    zero = torch.zeros_like(one)
    if name == "translation":
        rows = [one, zero, params[:, 0], zero, one, params[:, 1]]
    elif name == "attention":
        scale = params[:, 0]
        rows = [scale, zero, params[:, 1], zero, scale, params[:, 2]]
    elif name == "similarity":
        angle, scale = params[:, 0], params[:, 1]
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        rows = [cos, -sin, params[:, 2], sin, cos, params[:, 3]]
    else:
        rows = list(params.unbind(1))
    return torch.stack(rows, 1).view(-1, 2, 3)


def test_similarity_rotates_by_the_angle():
    # A quarter turn maps the output's right-hand edge midpoint (1, 0) to (0, 1) with
    # align_corners=True, scale 2 doubles it and the translation shifts it.
    transform = make_transform("similarity", (3, 3), align_corners=True)
    grid = transform(torch.tensor([[math.pi / 2, 2.0, 0.1, -0.2]]))
    torch.testing.assert_close(grid[0, 1, 2], torch.tensor([0.1, 1.8]))


def test_transform_reprs_show_their_settings():
    assert repr(make_transform("tps", (4, 5), control_grid=(3, 3))) == (
        "ThinPlateSpline(num_params=18, out_size=(4, 5), align_corners=False, control_grid=(3, 3))"
    )
    assert repr(make_transform("attention", (28, 28), align_corners=True)) == (
        "Attention(num_params=3, out_size=(28, 28), align_corners=True)"
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_transform("rigid", (4, 4)), r"transform must be one of .*got 'rigid'"),
        (
            lambda: make_transform("affine", (4, 4), control_grid=(2, 2)),
            r"takes options none, got \['control_grid'\]",
        ),
        (lambda: make_transform("affine", (4,)), r"out_size must be \(h, w\)"),
        (
            lambda: make_transform("tps", (4, 4), control_grid=(1, 4)),
            r"control_grid must be \(rows, cols\) with rows, cols >= 2, got \(1, 4\)",
        ),
        (
            lambda: make_transform("affine", (4, 4))(torch.zeros(2, 4)),
            r"affine params must be \[N, 6\], got \[2, 4\]",
        ),
        (
            lambda: make_transform("translation", (4, 4))(torch.zeros(2, 2, dtype=torch.int32)),
            r"params must have a floating dtype, got torch.int32",
        ),
        (
            lambda: projective_grid(torch.zeros(2, 2, 3), (2, 1, 4, 4)),
            r"homography must be \[N, 3, 3\], got \[2, 2, 3\]",
        ),
        (
            lambda: tps_grid(torch.zeros(2, 9, 2), (2, 1, 4, 4)),
            r"offsets must be \[N, 16, 2\] for a 4x4 control grid, got \[2, 9, 2\]",
        ),
        (
            lambda: tps_grid(torch.zeros(2, 16, 2), (3, 1, 4, 4)),
            r"size\[0\] must equal .* \(2\), got 3",
        ),
    ],
)
def test_bad_transform_input_raises_value_error_naming_it(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()


@pytest.mark.parametrize(
    "op, args",
    [
        (
            torch.ops.stn.projective_grid.default,
            (torch.eye(3) + 0.1 * torch.randn(2, 3, 3), [2, 1, 3, 4], False),
        ),
        (torch.ops.stn.tps_grid.default, (0.1 * torch.randn(2, 16, 2), [2, 1, 3, 4], True, [4, 4])),
    ],
)
def test_custom_grid_ops_pass_opcheck(op, args):
    torch.library.opcheck(op, (args[0].requires_grad_(), *args[1:]))


@pytest.mark.parametrize("name", ["projective", "tps", "similarity"])
def test_transforms_run_under_torch_compile_fullgraph(name):
    torch._dynamo.reset()
    transform = make_transform(name, (4, 5))
    generator = torch.Generator().manual_seed(6)
    params = _random_params(name, 2, generator).float()
    compiled = torch.compile(transform, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (transform, compiled):
        p = params.clone().requires_grad_()
        grid = fn(p)
        grid.square().sum().backward()
        results.append((grid, p.grad))
    for mine, reference in zip(*results):
        torch.testing.assert_close(mine, reference)


def test_tps_matrix_computed_while_tracing_does_not_leak_into_eager_calls():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from stn_serve.ops import tps_kernel_matrix

    # A size no other test uses, so the first computation happens under fake tensors.
    with FakeTensorMode():
        tps_kernel_matrix(7, 5, False, (3, 3))
    eager = tps_kernel_matrix(7, 5, False, (3, 3))
    assert type(eager) is torch.Tensor
    assert torch.isfinite(eager).all()
    # M maps control points to grid points and reproduces constants: its rows sum to 1.
    torch.testing.assert_close(eager.sum(dim=1), torch.ones(35, dtype=torch.float64))
