"""The custom layer `stn_serve.ops`: grid_sample and affine_grid against torch's native ops."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from stn_serve.contract import PADDING_MODES
from stn_serve.errors import InvalidInputError
from stn_serve.ops import (
    affine_grid,
    affine_grid_backward,
    bilinear_sample_backward,
    grid_sample,
    sampler_kernel,
)

ALIGN = [False, True]



# (N, C, H_in, W_in, H_out, W_out): batch and channel counts of 1 and more, output smaller,
# larger and of another aspect than the input, and a one-pixel-wide input.
SHAPES = [
    (1, 1, 5, 5, 5, 5),
    (3, 2, 6, 9, 4, 7),
    (2, 5, 7, 4, 11, 6),
    (4, 1, 1, 6, 3, 3),
]


def random_grid(generator, batch, height, width, dtype=torch.float32, spread=1.6):
    """Points in [-spread, spread]^2: with spread > 1 many fall outside the input."""
    grid = torch.rand(batch, height, width, 2, generator=generator, dtype=torch.float64)
    return ((grid * 2 - 1) * spread).to(dtype)


def native(input, grid, padding_mode, align_corners):
    return F.grid_sample(
        input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
    )


def value_and_grads(sample, input, grid, grad_output, padding_mode, align_corners):
    input = input.detach().requires_grad_()
    grid = grid.detach().requires_grad_()
    output = sample(input, grid, padding_mode, align_corners)
    grad_input, grad_grid = torch.autograd.grad(output, (input, grid), grad_output)
    return output, grad_input, grad_grid


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_grid_sample_matches_native(sampler_implementation, shape, padding_mode, align_corners, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, channels, height, width, out_height, out_width = shape
    input = torch.randn(batch, channels, height, width, generator=generator)
    grid = random_grid(generator, batch, out_height, out_width)
    grad_output = torch.randn(batch, channels, out_height, out_width, generator=generator)
    ours = value_and_grads(grid_sample, input, grid, grad_output, padding_mode, align_corners)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, align_corners)
    for name, mine, reference in zip(("output", "grad_input", "grad_grid"), ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_both_sampler_ops_match_native(sampler_implementation, padding_mode, channels):
    # grid_sample runs stn::grid_sample_with_context when autograd wants gradients in eager
    # mode and stn::grid_sample otherwise (no grad, torch.compile, export): both must be right.
    generator = torch.Generator().manual_seed(2)
    input = torch.randn(2, channels, 6, 7, generator=generator)
    grid = random_grid(generator, 2, 5, 4)
    grad_output = torch.randn(2, channels, 5, 4, generator=generator)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, False)
    for op in (torch.ops.stn.grid_sample, torch.ops.stn.grid_sample_with_context):

        def sample(*args, op=op):
            output = op(*args)
            return output[0] if isinstance(output, tuple) else output

        ours = value_and_grads(sample, input, grid, grad_output, padding_mode, False)
        for mine, reference in zip(ours, theirs):
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflection"])
@pytest.mark.parametrize("channels", [1, 3])
def test_backward_in_groups_of_images_matches_native(monkeypatch, padding_mode, channels):
    # The reference's training backward splits large batches into groups of images; a budget of
    # one element makes every image its own group, and 5 images leave no group the same as another.
    monkeypatch.setenv(sampler_kernel.ENABLE_ENV, "0")
    monkeypatch.setattr(importlib.import_module("stn_serve.ops.bilinear"), "_GROUP_ELEMENTS", 1)
    generator = torch.Generator().manual_seed(11)
    input = torch.randn(5, channels, 6, 7, generator=generator)
    grid = random_grid(generator, 5, 4, 5)
    grad_output = torch.randn(5, channels, 4, 5, generator=generator)
    ours = value_and_grads(grid_sample, input, grid, grad_output, padding_mode, True)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, True)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_grid_sample_matches_native_on_non_contiguous_tensors(sampler_implementation, padding_mode):
    generator = torch.Generator().manual_seed(3)
    # A channels-last input sliced to every other column, and a grid stored as [N, 2, H, W].
    storage = torch.randn(2, 8, 12, 3, generator=generator)
    input = storage.permute(0, 3, 1, 2)[:, :, :, ::2]
    grid = (torch.rand(2, 2, 5, 6, generator=generator) * 3.2 - 1.6).permute(0, 2, 3, 1)
    grad_output = torch.randn(2, 3, 5, 6, generator=generator).transpose(2, 3).contiguous()
    grad_output = grad_output.transpose(2, 3)
    assert not input.is_contiguous() and not grid.is_contiguous()
    assert not grad_output.is_contiguous()
    ours = value_and_grads(grid_sample, input, grid, grad_output, padding_mode, False)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, False)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_gradient_at_pixel_centres_matches_native(sampler_implementation, padding_mode, align_corners):
    # The identity grid lands on integer pixel coordinates, where bilinear sampling has a kink:
    # the grid gradient there must be torch's (the difference towards the next pixel), or a
    # spatial transformer initialised at the identity would get no gradient.
    generator = torch.Generator().manual_seed(4)
    input = torch.randn(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    identity = torch.eye(2, 3, dtype=torch.float64).expand(2, 2, 3)
    grid = F.affine_grid(identity, [2, 3, 6, 6], align_corners=align_corners)
    grad_output = torch.randn(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    ours = value_and_grads(grid_sample, input, grid, grad_output, padding_mode, align_corners)
    theirs = value_and_grads(native, input, grid, grad_output, padding_mode, align_corners)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference)
    assert ours[2].abs().sum() > 0


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_identity_matrix_reproduces_the_input(sampler_implementation, padding_mode, align_corners):
    generator = torch.Generator().manual_seed(5)
    input = torch.randn(3, 2, 7, 9, generator=generator, dtype=torch.float64)
    matrix = torch.eye(2, 3, dtype=torch.float64).repeat(3, 1, 1)
    grid = affine_grid(matrix, input.shape, align_corners)
    # Only the rounding of the grid positions (about 1e-16 in float64) separates the sampled
    # points from the pixel centres.
    torch.testing.assert_close(
        grid_sample(input, grid, padding_mode, align_corners), input, atol=1e-12, rtol=0
    )


def test_hand_computed_three_by_three_example(sampler_implementation):
    # input (one channel):       grid points (x, y), align_corners=True so pixel = g + 1:
    #   [[1, 2, 0],              a: (-0.5,  0.0) -> pixel (0.5, 1.0)
    #    [4, 8, 6],              b: ( 0.5,  0.5) -> pixel (1.5, 1.5)
    #    [0, 2, 4]]              c: ( 1.5, -1.0) -> pixel (2.5, 0.0), half outside
    # a: y = 1 exactly, between (1, 0) = 4 and (1, 1) = 8 with weights 0.5 / 0.5 -> 6.0
    # b: the four pixels 8, 6, 2, 4 with weight 0.25 each -> 5.0
    # c: between (0, 2) = 0 and (0, 3) outside (zero padding) -> 0.5 * 0 + 0.5 * 0 = 0.0;
    #    with border padding x clips to 2 -> input[0, 2] = 0.0 as well, so use reflection:
    #    x = 2.5 reflects about 2 to 1.5 -> 0.5 * 2 + 0.5 * 0 = 1.0
    input = torch.tensor([[[[1.0, 2.0, 0.0], [4.0, 8.0, 6.0], [0.0, 2.0, 4.0]]]])
    grid = torch.tensor([[[[-0.5, 0.0], [0.5, 0.5], [1.5, -1.0]]]], requires_grad=True)
    output = grid_sample(input, grid, "zeros", align_corners=True)
    torch.testing.assert_close(output, torch.tensor([[[[6.0, 5.0, 0.0]]]]))
    reflected = grid_sample(input, grid.detach(), "reflection", align_corners=True)
    torch.testing.assert_close(reflected, torch.tensor([[[[6.0, 5.0, 1.0]]]]))

    # Gradients for an upstream gradient of 1 at every point; d pixel / d g = (3 - 1) / 2 = 1.
    # At an integer coordinate the neighbours are floor and floor + 1, as in torch.
    # a: x0, x1 = 0, 1 and y0, y1 = 1, 2; wx = (0.5, 0.5), wy = (1, 0)
    #    d/dx = wy0 * (8 - 4) + wy1 * (2 - 0) = 4
    #    d/dy = wx0 * (0 - 4) + wx1 * (2 - 8) = -5
    # b: d/dx = 0.5 * (6 - 8) + 0.5 * (4 - 2) = 0;  d/dy = 0.5 * (2 - 8) + 0.5 * (4 - 6) = -4
    # c: x0, x1 = 2, 3 (outside, reads 0) and y0, y1 = 0, 1; wx = (0.5, 0.5), wy = (1, 0)
    #    d/dx = 1 * (0 - 0) + 0 * (0 - 6) = 0;  d/dy = 0.5 * (6 - 0) + 0.5 * (0 - 0) = 3
    output.sum().backward()
    torch.testing.assert_close(grid.grad, torch.tensor([[[[4.0, -5.0], [0.0, -4.0], [0.0, 3.0]]]]))

    # The input gradient scatters each point's weights: a puts 0.5 on (1, 0) and (1, 1),
    # b puts 0.25 on (1, 1), (1, 2), (2, 1), (2, 2), c puts 0.5 on (0, 2).
    input = input.requires_grad_()
    grid_sample(input, grid.detach(), "zeros", align_corners=True).sum().backward()
    expected = torch.tensor([[[[0.0, 0.0, 0.5], [0.5, 0.75, 0.25], [0.0, 0.25, 0.25]]]])
    torch.testing.assert_close(input.grad, expected)


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_grid_sample_gradcheck(sampler_implementation, padding_mode, align_corners):
    generator = torch.Generator().manual_seed(6)
    input = torch.randn(2, 2, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    grid = random_grid(generator, 2, 3, 3, torch.float64, spread=1.3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda i, g: grid_sample(i, g, padding_mode, align_corners), (input, grid)
    )


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("size", [(3, 1, 4, 5), (2, 3, 1, 6), (1, 1, 7, 2)])
def test_affine_grid_matches_native_and_gradcheck(size, align_corners):
    generator = torch.Generator().manual_seed(7)
    matrix = torch.randn(size[0], 2, 3, generator=generator, dtype=torch.float64)
    matrix.requires_grad_()
    grid = affine_grid(matrix, size, align_corners)
    with pytest.warns(UserWarning) if 1 in size[2:] and align_corners else _no_warning():
        reference = F.affine_grid(matrix, size, align_corners=align_corners)
    grad_grid = torch.randn(grid.shape, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(grid, reference)
    torch.testing.assert_close(
        torch.autograd.grad(grid, matrix, grad_grid)[0],
        torch.autograd.grad(reference, matrix, grad_grid)[0],
    )
    assert torch.autograd.gradcheck(lambda t: affine_grid(t, size, align_corners), (matrix,))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_affine_grid_on_non_contiguous_matrix():
    matrix = torch.randn(3, 2, 4)[:, :, 1:]
    assert not matrix.is_contiguous()
    torch.testing.assert_close(
        affine_grid(matrix, (3, 1, 5, 6)), F.affine_grid(matrix, (3, 1, 5, 6), align_corners=False)
    )


def test_full_layer_gradient_matches_native(sampler_implementation):
    # affine_grid feeding grid_sample, as a spatial transformer uses them: matrix gets the
    # gradient of the whole chain.
    generator = torch.Generator().manual_seed(8)
    input = torch.randn(4, 3, 12, 10, generator=generator)
    matrix = torch.eye(2, 3) + 0.3 * torch.randn(4, 2, 3, generator=generator)
    grad_output = torch.randn(4, 3, 8, 8, generator=generator)

    def run(grid_fn, sample_fn):
        t = matrix.clone().requires_grad_()
        i = input.clone().requires_grad_()
        output = sample_fn(i, grid_fn(t, (4, 3, 8, 8)))
        return (output, *torch.autograd.grad(output, (i, t), grad_output))

    ours = run(affine_grid, grid_sample)
    theirs = run(
        lambda t, size: F.affine_grid(t, size, align_corners=False),
        lambda i, g: F.grid_sample(i, g, align_corners=False),
    )
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-5)


def test_no_native_sampler_or_affine_grid_kernel_is_called(sampler_implementation, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a native grid sampler or affine-grid kernel was called")

    for owner, name in [
        (torch, "grid_sampler"),
        (torch, "grid_sampler_2d"),
        (torch, "affine_grid_generator"),
        (F, "grid_sample"),
        (F, "affine_grid"),
    ]:
        monkeypatch.setattr(owner, name, forbidden)
    input = torch.randn(2, 3, 6, 6, requires_grad=True)
    matrix = (torch.eye(2, 3) + 0.2 * torch.randn(2, 2, 3)).requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        output = grid_sample(input, affine_grid(matrix, (2, 3, 4, 4)), "reflection")
        output.sum().backward()
    assert input.grad is not None and matrix.grad is not None
    # The profiler records every aten op that ran, also those called from C++ inside others.
    names = {event.name for event in profile.events()}
    native = {
        name
        for name in names
        if name.startswith("aten::") and ("grid_sampler" in name or "affine_grid" in name)
    }
    assert native == set(), native
    kernel_ops = {"stn_kernel::bilinear_sample", "stn_kernel::bilinear_sample_backward"}
    if sampler_implementation == "kernel":
        # One op each way, both the fused kernel's.
        assert {"stn::grid_sample", "stn::grid_sample_backward", *kernel_ops} <= names
        assert "stn::grid_sample_with_context" not in names
    else:
        # With gradients wanted in eager mode, the reference runs its training-path op.
        assert {
            "stn::grid_sample_with_context",
            "stn::affine_grid",
            "aten::embedding_bag",
            "aten::scatter_add_",
        } <= names
        assert not kernel_ops & names


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: affine_grid(torch.zeros(4, 3, 3), (4, 1, 5, 5)),
            r"matrix must be \[N, 2, 3\], got \[4, 3, 3\]",
        ),
        (
            lambda: affine_grid(torch.zeros(4, 2, 3), (3, 1, 5, 5)),
            r"size\[0\] must equal .* \(4\), got 3",
        ),
        (lambda: affine_grid(torch.zeros(4, 2, 3), (4, 5, 5)), r"size must be \(N, C, H, W\)"),
        (
            lambda: affine_grid(torch.zeros(4, 2, 3, dtype=torch.int64), (4, 1, 5, 5)),
            r"matrix must have a floating dtype, got torch.int64",
        ),
        (
            lambda: grid_sample(torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 3, 3)),
            r"grid must be \[N, H, W, 2\], got \[2, 3, 3, 3\]",
        ),
        (
            lambda: grid_sample(torch.zeros(2, 1, 4, 4), torch.zeros(3, 3, 3, 2)),
            r"grid batch must equal input batch 2, got grid \[3, 3, 3, 2\]",
        ),
        (
            lambda: grid_sample(torch.zeros(1, 4, 4), torch.zeros(1, 3, 3, 2)),
            r"input must be \[N, C, H, W\] with H, W >= 1, got \[1, 4, 4\]",
        ),
        (
            lambda: grid_sample(torch.zeros(1, 1, 0, 4), torch.zeros(1, 3, 3, 2)),
            r"input must be \[N, C, H, W\] with H, W >= 1, got \[1, 1, 0, 4\]",
        ),
        (
            lambda: grid_sample(
                torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, 3, 3, 2)
            ),
            r"input must have a floating dtype, got torch.uint8",
        ),
        (
            lambda: grid_sample(
                torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 3, 2, dtype=torch.float64)
            ),
            r"grid must have the dtype of input \(torch.float32\), got torch.float64",
        ),
        (
            lambda: grid_sample(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 3, 2), "mirror"),
            r"padding_mode must be one of zeros, border, reflection, got 'mirror'",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, message):
    with pytest.raises(InvalidInputError, match=message) as raised:
        call()
    assert isinstance(raised.value, ValueError)


def test_backward_functions_skip_gradients_not_asked_for():
    input = torch.randn(1, 2, 4, 4)
    grid = torch.rand(1, 3, 3, 2) * 2 - 1
    grad_output = torch.randn(1, 2, 3, 3)
    grad_input, grad_grid = bilinear_sample_backward(
        grad_output, input, grid, "zeros", False, need_input_grad=False
    )
    assert grad_input is None and grad_grid.shape == grid.shape
    grad_input, grad_grid = bilinear_sample_backward(
        grad_output, input, grid, "zeros", False, need_grid_grad=False
    )
    assert grad_grid is None and grad_input.shape == input.shape
    assert affine_grid_backward(torch.ones(2, 3, 4, 2), (2, 1, 3, 4), False).shape == (2, 2, 3)


def _backward_args(channels, padding_mode, align_corners, need_input_grad):
    """Arguments of stn::grid_sample_backward: grad_output, input, grid and the settings."""
    return (
        torch.randn(2, channels, 6, 2),
        torch.randn(2, channels, 5, 4),
        torch.rand(2, 6, 2, 2) * 2 - 1,
        padding_mode,
        align_corners,
        need_input_grad,
    )


@pytest.mark.parametrize(
    "op, args",
    [
        (
            torch.ops.stn.grid_sample.default,
            (torch.randn(2, 3, 5, 4), torch.rand(2, 3, 6, 2) * 2 - 1, "border", False),
        ),
        (
            torch.ops.stn.grid_sample_with_context.default,
            (torch.randn(2, 3, 5, 4), torch.rand(2, 3, 6, 2) * 2 - 1, "reflection", True),
        ),
        (
            torch.ops.stn.grid_sample_with_context.default,
            (torch.randn(2, 1, 5, 4), torch.rand(2, 3, 6, 2) * 2 - 1, "zeros", False),
        ),
        (torch.ops.stn.affine_grid.default, (torch.randn(2, 2, 3), [2, 1, 4, 5], True)),
        (torch.ops.stn.grid_sample_backward.default, _backward_args(3, "zeros", False, True)),
        (torch.ops.stn.grid_sample_backward.default, _backward_args(1, "border", True, False)),
    ],
)
def test_custom_op_registration_passes_opcheck(sampler_implementation, op, args):
    # The backward op has no gradient of its own (nor has torch's grid sampler backward).
    differentiable = op is not torch.ops.stn.grid_sample_backward.default
    args = tuple(
        a.requires_grad_(differentiable) if isinstance(a, torch.Tensor) else a for a in args
    )
    torch.library.opcheck(op, args)


def _spatial_transformer(input, matrix):
    return grid_sample(input, affine_grid(matrix, (input.shape[0], input.shape[1], 6, 5)), "zeros")


def _compiled_matches_eager(backend, channels):
    generator = torch.Generator().manual_seed(9)
    input = torch.randn(3, channels, 8, 7, generator=generator)
    matrix = torch.eye(2, 3) + 0.2 * torch.randn(3, 2, 3, generator=generator)
    compiled = torch.compile(_spatial_transformer, backend=backend, fullgraph=True)
    results = []
    for fn in (_spatial_transformer, compiled):
        i, t = input.clone().requires_grad_(), matrix.clone().requires_grad_()
        output = fn(i, t)
        output.square().sum().backward()
        results.append((output, i.grad, t.grad))
    for mine, reference in zip(*results):
        torch.testing.assert_close(mine, reference)


@pytest.mark.parametrize("channels", [1, 2])
def test_layer_runs_under_torch_compile_fullgraph(sampler_implementation, channels):
    torch._dynamo.reset()
    _compiled_matches_eager("aot_eager", channels)


@pytest.mark.slow
def test_layer_runs_under_torch_compile_inductor(sampler_implementation):
    torch._dynamo.reset()
    _compiled_matches_eager("inductor", 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("channels", [1, 4])
def test_layer_matches_native_on_cuda(channels, padding_mode):
    generator = torch.Generator().manual_seed(10)
    input = torch.randn(3, channels, 9, 8, generator=generator).cuda()
    matrix = (torch.eye(2, 3) + 0.3 * torch.randn(3, 2, 3, generator=generator)).cuda()
    grad_output = torch.randn(3, channels, 7, 6, generator=generator).cuda()

    def run(grid_fn, sample_fn):
        i, t = input.clone().requires_grad_(), matrix.clone().requires_grad_()
        output = sample_fn(i, grid_fn(t, (3, channels, 7, 6)), padding_mode)
        return (output, *torch.autograd.grad(output, (i, t), grad_output))

    ours = run(affine_grid, grid_sample)
    theirs = run(
        lambda t, size: F.affine_grid(t, size, align_corners=False),
        lambda i, g, mode: F.grid_sample(i, g, padding_mode=mode, align_corners=False),
    )
    for mine, reference in zip(ours, theirs):
        assert mine.is_cuda
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_empty_batch_gives_empty_output_and_gradients(sampler_implementation, channels):
    input = torch.rand(0, channels, 5, 5, requires_grad=True)
    matrix = torch.zeros(0, 2, 3, requires_grad=True)
    output = grid_sample(input, affine_grid(matrix, (0, channels, 4, 3)))
    output.sum().backward()
    assert output.shape == (0, channels, 4, 3)
    assert input.grad.shape == input.shape and matrix.grad.shape == matrix.shape


@pytest.mark.parametrize("channels", [1, 3])
def test_nan_grid_points_give_nan_output_instead_of_an_error(sampler_implementation, channels):
    input = torch.rand(2, channels, 5, 5)
    grid = torch.zeros(2, 3, 3, 2)
    grid[0, 1, 1] = float("nan")
    output = grid_sample(input, grid)
    assert torch.isnan(output[0, :, 1, 1]).all()
    assert torch.isfinite(output[1]).all()
