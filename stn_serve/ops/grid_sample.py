"""`grid_sample`: the bilinear sampler as `torch.library` custom ops, with a hand-written backward.

The maths, its derivation and the tensor-op implementation are in `stn_serve.ops.bilinear`.

On the CPU the steps of that derivation run as one fused C++ kernel
(`csrc/bilinear_sampler.cpp`, built on first use by `sampler_kernel`), with the same operations in
the same order: steps 1 and 2 per axis (`Axis::pixel`: the unnormalisation, the reflection fold
and the clip, with the slope d x / d gx), step 3 per point (`Sampler::locate`: floor, fractions,
the four weights, and for each neighbour its flat index and whether it lies inside; a neighbour
outside reads an exact zero and receives nothing), then per channel the gather and weighted sum
(forward), or, in the same pass, the sums over channels of d out / d x and d out / d y against g
and the scatter-add of g * w_y * w_x (backward). One parallel loop over the batch: an image's
input-gradient planes are written by the one thread that claimed it. It serves float32 and
float64; elsewhere (other devices and dtypes, `STN_SAMPLER_KERNEL=0`, no compiler) the tensor ops
of `bilinear` run, and they are what the ONNX export and the exported gradient model trace.

Three ops. `stn::grid_sample` (what no-grad calls, torch.compile, the ONNX exporter and, where the
kernel runs, training see) saves only its inputs, and its backward, `stn::grid_sample_backward`
(the kernel, or `bilinear_sample_backward`), derives the neighbours from the grid again, as
torch's own kernel does. `stn::grid_sample_with_context`, which `grid_sample` runs in eager mode
when autograd wants gradients and the kernel does not run, also returns what the tensor-op
backward needs (`SampleContext`: the top-left indices, fractions and slope, and for the grid
gradient the padded channels-last input or, for one channel, d out / d (x, y), which the forward
gets from the neighbour values it has already read), so the backward repeats none of the
forward's passes.
"""

from __future__ import annotations

import torch

from stn_serve.ops import sampler_kernel
from stn_serve.ops.bilinear import (
    PAD,
    Neighbours,
    SampleContext,
    bilinear_sample_backward,
    bilinear_sample_forward,
    check_sample_inputs,
    gradients_from_context,
    grid_points,
    image_groups,
    neighbour_offsets,
    sample_at,
)


@torch.library.custom_op("stn::grid_sample", mutates_args=())
def _grid_sample_op(
    input: torch.Tensor, grid: torch.Tensor, padding_mode: str, align_corners: bool
) -> torch.Tensor:
    check_sample_inputs(input, grid, padding_mode)
    return bilinear_sample_forward(input, grid, padding_mode, align_corners)


@_grid_sample_op.register_fake
def _(input, grid, padding_mode, align_corners):
    check_sample_inputs(input, grid, padding_mode)
    return input.new_empty(input.shape[0], input.shape[1], grid.shape[1], grid.shape[2])


def _setup_context(ctx, inputs, output):
    input, grid, padding_mode, align_corners = inputs
    ctx.save_for_backward(input, grid)
    ctx.padding_mode = padding_mode
    ctx.align_corners = align_corners


def _backward(ctx, grad_output):
    input, grid = ctx.saved_tensors
    need_input_grad, need_grid_grad = ctx.needs_input_grad[:2]
    grad_input, grad_grid = torch.ops.stn.grid_sample_backward(
        grad_output, input, grid, ctx.padding_mode, ctx.align_corners, need_input_grad
    )
    return (
        grad_input if need_input_grad else None,
        grad_grid if need_grid_grad else None,
        None,
        None,
    )


_grid_sample_op.register_autograd(_backward, setup_context=_setup_context)


# The backward as an op of its own, so that the CPU kernel can implement it and traced graphs
# (torch.compile) keep it as one node. A gradient not asked for comes back as an empty tensor.
@torch.library.custom_op("stn::grid_sample_backward", mutates_args=())
def _grid_sample_backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    grid: torch.Tensor,
    padding_mode: str,
    align_corners: bool,
    need_input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _reference_backward(
        grad_output, input, grid, padding_mode, align_corners, need_input_grad
    )


def _reference_backward(grad_output, input, grid, padding_mode, align_corners, need_input_grad):
    """`stn::grid_sample_backward` by `bilinear_sample_backward`."""
    grad_input, grad_grid = bilinear_sample_backward(
        grad_output, input, grid, padding_mode, align_corners, need_input_grad
    )
    grad_input = grad_input.contiguous() if need_input_grad else input.new_empty(0)
    return grad_input, grad_grid.contiguous()


@_grid_sample_backward_op.register_fake
def _(grad_output, input, grid, padding_mode, align_corners, need_input_grad):
    grad_input = input.new_empty(input.shape if need_input_grad else (0,))
    return grad_input, grid.new_empty(grid.shape)


# On the CPU both ops run the fused kernel (stn_serve/ops/csrc/bilinear_sampler.cpp) where
# `sampler_kernel` has it; elsewhere, and as the fallback, the tensor-op functions above.
@_grid_sample_op.register_kernel("cpu")
def _(input, grid, padding_mode, align_corners):
    check_sample_inputs(input, grid, padding_mode)
    kernel = sampler_kernel.kernel_for(input)
    if kernel is None:
        return bilinear_sample_forward(input, grid, padding_mode, align_corners)
    return kernel.bilinear_sample(input, grid, padding_mode, align_corners)


@_grid_sample_backward_op.register_kernel("cpu")
def _(grad_output, input, grid, padding_mode, align_corners, need_input_grad):
    kernel = sampler_kernel.kernel_for(input)
    if kernel is None:
        return _reference_backward(
            grad_output, input, grid, padding_mode, align_corners, need_input_grad
        )
    return kernel.bilinear_sample_backward(
        grad_output, input, grid, padding_mode, align_corners, need_input_grad
    )


# The training path: the same forward, also returning its `SampleContext` (top-left indices,
# fractions, slope, grid source) so that the backward does not derive them again.
@torch.library.custom_op("stn::grid_sample_with_context", mutates_args=())
def _grid_sample_with_context_op(
    input: torch.Tensor, grid: torch.Tensor, padding_mode: str, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_sample_inputs(input, grid, padding_mode)
    neighbours, slope = grid_points(input, grid, padding_mode, align_corners)
    output, grid_source = sample_at(
        input, neighbours, grid.shape[1], grid.shape[2], with_grid_source=True
    )
    return output, neighbours.top_left, neighbours.fraction, slope, grid_source


@_grid_sample_with_context_op.register_fake
def _(input, grid, padding_mode, align_corners):
    check_sample_inputs(input, grid, padding_mode)
    batch, channels, height, width = input.shape
    points = grid.shape[1] * grid.shape[2]
    plane_size = (height + 2 * PAD) * (width + 2 * PAD)
    slope_shape = (1, 2, 1) if padding_mode == "zeros" else (batch, 2, points)
    source_shape = (batch, 2, points) if channels == 1 else (batch * plane_size, channels)
    return (
        input.new_empty(batch, channels, grid.shape[1], grid.shape[2]),
        input.new_empty(batch, points, dtype=torch.int64),
        input.new_empty(batch, 2, points),
        input.new_empty(slope_shape),
        input.new_empty(source_shape),
    )


def _setup_context_with_context(ctx, inputs, output):
    input = inputs[0]
    _, top_left, fraction, slope, grid_source = output
    ctx.mark_non_differentiable(top_left, fraction, slope, grid_source)
    # The backward only reads the output's gradient: not materialising zero gradients for the
    # context outputs saves filling tensors as large as the input.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(top_left, fraction, slope, grid_source)
    ctx.input_shape = input.shape


def _backward_with_context(ctx, grad_output, *_):
    if grad_output is None:
        # Autograd reached the op only through its context outputs, which carry no gradient.
        return None, None, None, None
    top_left, fraction, slope, grid_source = ctx.saved_tensors
    batch, channels, height, width = ctx.input_shape
    offsets = neighbour_offsets(width)
    # grid_source holds one row per image for one channel, else one per padded pixel.
    source_rows = 1 if channels == 1 else (height + 2 * PAD) * (width + 2 * PAD)
    parts = []
    for start, stop in image_groups(batch, channels, top_left.shape[1]):
        context = SampleContext(
            Neighbours(top_left[start:stop], offsets, fraction[start:stop]),
            slope if slope.shape[0] == 1 else slope[start:stop],
            grid_source[start * source_rows : stop * source_rows],
        )
        parts.append(
            gradients_from_context(
                grad_output[start:stop],
                context,
                (stop - start, channels, height, width),
                need_input_grad=ctx.needs_input_grad[0],
                need_grid_grad=ctx.needs_input_grad[1],
            )
        )
    grad_input, grad_grid = (_join(grads) for grads in zip(*parts))
    return grad_input, grad_grid, None, None


def _join(grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor | None:
    """The groups' gradients as one batch (None where the gradient was not asked for)."""
    if grads[0] is None or len(grads) == 1:
        return grads[0]
    return torch.cat(grads)


_grid_sample_with_context_op.register_autograd(
    _backward_with_context, setup_context=_setup_context_with_context
)


def grid_sample(
    input: torch.Tensor,
    grid: torch.Tensor,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Bilinearly sample `input` at `grid`, like `torch.nn.functional.grid_sample(mode="bilinear")`.

    Runs `torch.ops.stn.grid_sample`: on the CPU the fused kernel, elsewhere
    `bilinear_sample_forward`, with the backward `torch.ops.stn.grid_sample_backward`. Where the
    kernel does not run and autograd will want gradients in eager mode, it runs
    `torch.ops.stn.grid_sample_with_context` instead, the same forward that also hands the
    backward what it derived from the grid; traced graphs (torch.compile, export) keep the one
    op that the exporters map.

    Args:
        input (Tensor[N, C, H_in, W_in]): the map to sample.
        grid (Tensor[N, H, W, 2]): sampling points (x, y) in [-1, 1] coordinates of `input`.
        padding_mode (str): "zeros" (default), "border" or "reflection": what points outside
            the input read.
        align_corners (bool): whether -1 and 1 are the centres (True) or the outer edges (False,
            default) of the corner pixels.

    Returns:
        Tensor[N, C, H, W]

    Raises:
        InvalidInputError (a ValueError): for shapes, dtypes or a padding mode not as above.
    """
    if (
        torch.is_grad_enabled()
        and (input.requires_grad or grid.requires_grad)
        and not torch.compiler.is_compiling()
        and sampler_kernel.kernel_for(input) is None
    ):
        return torch.ops.stn.grid_sample_with_context(input, grid, padding_mode, align_corners)[0]
    return torch.ops.stn.grid_sample(input, grid, padding_mode, align_corners)
