"""Bilinear sampling of a feature map at a grid of points, and its gradients, in plain tensor ops:
the reference the fused CPU kernel is held to, the fallback where it does not run, and what
the ONNX export and the exported gradient model trace.

Matches `torch.nn.functional.grid_sample(mode="bilinear")` in value and gradient without calling
torch's grid sampler. For one output point with grid value (gx, gy) in [-1, 1] coordinates:

1. Unnormalise to pixel coordinates of the input (W_in, H_in):
   `align_corners=True`:  x = (gx + 1) * (W_in - 1) / 2
   `align_corners=False`: x = (gx + 1) * W_in / 2 - 0.5      (and y likewise with H_in)
2. Apply the padding mode to the coordinate: `zeros` leaves it; `border` clips it to
   [0, W_in - 1]; `reflection` reflects it about the borders (the pixel centres 0 and W_in - 1
   with `align_corners=True`, the outer edges -0.5 and W_in - 0.5 otherwise), then clips.
3. The four neighbours are x0 = floor(x), x1 = x0 + 1 (and y0, y1); the weights are the
   distances to the opposite neighbour, wx1 = x - x0, wx0 = 1 - wx1, and the output is
   sum over the four corners of w_y * w_x * input[y, x], a neighbour outside the input reading 0.

Gradients, with g the output gradient:
- input: every point scatter-adds g * w_y * w_x into each of its four neighbours.
- grid: d out / d x = wy0 * (v[y0, x1] - v[y0, x0]) + wy1 * (v[y1, x1] - v[y1, x0]) (and
  symmetrically for y), summed over channels against g, times d x / d gx: the unnormalisation
  scale, times -1 where reflection flipped the coordinate, times 0 where border or reflection
  clipped it (the borders themselves count as clipped). floor() is piecewise constant, so it
  contributes nothing: at an integer coordinate the derivative is the difference towards x0 + 1,
  as in torch, so identity grids that land on pixel centres still pass gradient to the transform.

Implementation, in plain tensor ops (`bilinear_sample_forward`, `bilinear_sample_backward`):
per-point quantities are [N, 2, P] tensors (x and y apart, P = H * W), so elementwise ops run
over long rows. The input is padded with two zero pixels on each side and the top-left
neighbour's flat index is clamped into that padding, so a neighbour outside the input reads zero
with no masks; neighbour k sits at that index plus a constant offset (0, 1, W + 4, W + 5), so the
four are read and written through views of the padded plane shifted by the offsets, with one
index. A one-channel input gathers the four values that way and interpolates with three `lerp`s. A
multi-channel input gathers rows of a channels-last copy with `embedding_bag(mode="sum",
per_sample_weights=w)` over bags of the four neighbours, which fuses the gather and the weighted
sum: out[p] = sum_k w[p, k] * rows[index[p, k]] (in ONNX terms Gather, Mul, ReduceSum over the
bag axis). The input gradient is one `scatter_add_` per neighbour of the weighted output
gradient into the shifted padded planes, then the padding is cut off.

The training path's backward works through the batch in groups of images (`image_groups`), so
that its temporaries stay small (`_GROUP_ELEMENTS`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stn_serve.contract import PADDING_MODES
from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import require_floating, require_same_dtype, shape_text

# The sampled map is padded with this many zero pixels on each side, so that every clamped
# neighbour index stays inside it: neighbours that fall outside the input read (and receive) zero.
PAD = 2

# The training backward works through large batches in groups of images of about this many
# output elements (N * C * P), so that its temporaries, the size of a group's output, stay in
# cache and are reused by the allocator; whole-batch ones would be mapped fresh, page by page,
# on every call.
_GROUP_ELEMENTS = 1 << 19


def check_sample_inputs(input: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> None:
    """Raise `InvalidInputError` (a ValueError) naming what is wrong with the arguments."""
    require_floating("input", input)
    require_floating("grid", grid)
    if input.dim() != 4 or input.shape[2] < 1 or input.shape[3] < 1:
        raise InvalidInputError(
            f"input must be [N, C, H, W] with H, W >= 1, got {shape_text(input.shape)}"
        )
    if grid.dim() != 4 or grid.shape[-1] != 2:
        raise InvalidInputError(f"grid must be [N, H, W, 2], got {shape_text(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise InvalidInputError(
            f"grid batch must equal input batch {int(input.shape[0])}, "
            f"got grid {shape_text(grid.shape)}"
        )
    require_same_dtype("grid", grid, "input", input)
    check_padding_mode(padding_mode)


def check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise InvalidInputError(
            f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}"
        )


def source_coordinates(
    coords: torch.Tensor, height: int, width: int, padding_mode: str, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates of normalised grid coordinates, and their derivative.

    Args:
        coords (Tensor[N, 2, P]): x then y of P grid points per image, -1 and 1 being the
            input's extremes.
        height, width (int): the input's spatial size.

    Returns:
        (Tensor[N, 2, P], Tensor[N, 2, P] or Tensor[1, 2, 1]): the pixel coordinates after the
        padding mode, and d(pixel coordinate) / d(grid coordinate).
    """
    sizes = coords.new_tensor([width, height]).view(1, 2, 1)
    scale = (sizes - 1) / 2 if align_corners else sizes / 2
    # The operations and their order are torch's, so that points land on exactly the same side
    # of a pixel centre (which matters for the gradient there). The first one writes a fresh
    # contiguous tensor, so a transposed view of the grid costs no extra copy.
    pixel = torch.add(coords, 1, out=coords.new_empty(coords.shape)).mul_(scale)
    if not align_corners:
        pixel.sub_(0.5)
    if padding_mode == "zeros":
        return pixel, scale
    slope = scale
    if padding_mode == "reflection":
        pixel, flip = _reflect(pixel, sizes, align_corners)
        slope = slope * flip
    # Clipping to the border; points on the border itself get no gradient, as in torch.
    inside = (pixel > 0) & (pixel < sizes - 1)
    return torch.minimum(pixel.clamp_(min=0), sizes - 1), slope * inside


def _reflect(
    pixel: torch.Tensor, sizes: torch.Tensor, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold coordinates into [low, low + span] by reflecting at both ends; return the folded
    coordinate and +1 / -1 for how many times it was mirrored (even / odd)."""
    if align_corners:
        low, twice_span = 0.0, 2 * (sizes - 1)
    else:
        low, twice_span = -0.5, 2 * sizes
    shifted = pixel - low
    distance = shifted.abs()
    # A one-pixel axis with align_corners=True has an empty span: every point folds to 0.
    nonempty = twice_span > 0
    span = torch.where(nonempty, twice_span, torch.ones_like(twice_span))
    extra = distance - torch.trunc(distance / span) * span
    reflected = span - extra
    flipped = extra > reflected
    folded = torch.where(flipped, reflected, extra) + low
    flip = (1.0 - 2.0 * (flipped ^ (shifted < 0)).to(pixel.dtype)) * nonempty
    return folded * nonempty, flip


class Neighbours(NamedTuple):
    """The four neighbours (y0 x0, y0 x1, y1 x0, y1 x1) of P points in each of N images,
    x0 = floor(x) and x1 = x0 + 1, and the fractions x - x0, y - y0.

    Neighbour k of a point sits at `top_left + offsets[k]` in one image's plane of
    `padded_planes`; gathering and scattering through views of the plane shifted by each offset
    reuse the one index instead of materialising four."""

    top_left: torch.Tensor  # (N, P) int64: the flat index of (y0, x0)
    offsets: tuple[int, int, int, int]  # 0, 1, W + 4, W + 5
    fraction: torch.Tensor  # (N, 2, P): x - x0 then y - y0, the weights of x1 and y1


def neighbour_offsets(width: int) -> tuple[int, int, int, int]:
    """The flat offsets of the four neighbours from the top-left one in a padded plane."""
    padded_width = width + 2 * PAD
    return (0, 1, padded_width, padded_width + 1)


def bilinear_weights(fraction: torch.Tensor) -> list[torch.Tensor]:
    """The weights wy * wx (Tensor[N, P] each) of the neighbours y0 x0, y0 x1, y1 x0, y1 x1,
    from the fractions (Tensor[N, 2, P]); four tensors, because stacking costs a pass more."""
    fraction_x, fraction_y = fraction.unbind(1)
    left, top = 1 - fraction_x, 1 - fraction_y
    return [top * left, top * fraction_x, fraction_y * left, fraction_y * fraction_x]


def weight_steps(fraction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Tensor[N, P, 4], Tensor[N, P, 4]): d weight / d x = (-wy0, wy0, -wy1, wy1) and
    d weight / d y = (-wx0, -wx1, wx0, wx1) of each neighbour, from the fractions (Tensor[N, 2, P])."""
    fraction_x, fraction_y = fraction.unbind(1)
    along_x = torch.stack((fraction_y - 1, 1 - fraction_y, -fraction_y, fraction_y), dim=2)
    along_y = torch.stack((fraction_x - 1, -fraction_x, 1 - fraction_x, fraction_x), dim=2)
    return along_x, along_y


def bilinear_neighbours(pixel: torch.Tensor, height: int, width: int) -> Neighbours:
    """Neighbours and fractions of pixel coordinates (Tensor[N, 2, P], x then y)."""
    corner = torch.floor(pixel)
    fraction = pixel - corner
    padded_width = width + 2 * PAD
    # Clamping into the padding keeps far-away points in range; a clamped neighbour lies in the
    # zero padding either way, because x0 < -2 puts both x0 and x1 left of the input. A NaN
    # point (from a diverged transform) reads the padding too, instead of an invalid index.
    corner.nan_to_num_(nan=-PAD).clamp_(min=-PAD).clamp_(
        max=pixel.new_tensor([width, height]).view(1, 2, 1)
    )
    top_left = torch.add(corner[:, 0], corner[:, 1], alpha=padded_width)
    top_left = top_left.add_(PAD * padded_width + PAD).to(torch.int64)
    return Neighbours(top_left, neighbour_offsets(width), fraction)


def padded_planes(input: torch.Tensor) -> torch.Tensor:
    """Tensor[N, C, (H + 4) * (W + 4)]: each image plane with two zero pixels around it, so that
    every clamped neighbour index reads a pixel or zero."""
    return nn.functional.pad(input, (PAD, PAD, PAD, PAD)).flatten(2)


def padded_rows(input: torch.Tensor) -> torch.Tensor:
    """Tensor[N * (H + 4) * (W + 4), C]: `padded_planes` channels-last, one row per pixel."""
    batch, channels, height, width = input.shape
    # One contiguous fill and then the interior: zeroing only the border, in four strided
    # pieces, takes longer than writing the whole map twice.
    rows = input.new_zeros(batch, height + 2 * PAD, width + 2 * PAD, channels)
    rows[:, PAD : PAD + height, PAD : PAD + width] = input.permute(0, 2, 3, 1)
    return rows.view(-1, channels)


def image_groups(batch: int, channels: int, points: int) -> list[tuple[int, int]]:
    """(start, stop) of groups of images of about `_GROUP_ELEMENTS` output elements; an empty
    batch is one empty group, so that it still gives results of the right shapes."""
    size = max(1, _GROUP_ELEMENTS // max(1, channels * points))
    return [(start, min(batch, start + size)) for start in range(0, max(batch, 1), size)]


def _bags(neighbours: Neighbours, height: int, width: int) -> torch.Tensor:
    """Tensor[N * P, 4]: the neighbours' rows in `padded_rows`, one bag of four per point."""
    top_left = neighbours.top_left
    plane_size = (height + 2 * PAD) * (width + 2 * PAD)
    image_start = torch.arange(top_left.shape[0], device=top_left.device).view(-1, 1) * plane_size
    offsets = torch.tensor(neighbours.offsets, device=top_left.device)
    return (top_left + image_start).view(-1, 1) + offsets


def weighted_bag_sum(rows: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Tensor[B, C]: sum over the four neighbours k of weights[b, k] * rows[bags[b, k]].

    The gather of the neighbour rows and their weighted sum in one pass (an embedding bag sum),
    with no [B, 4, C] intermediate.

    Args:
        rows (Tensor[L, C]): `padded_rows`.
        bags (Tensor[B, 4], int64): `_bags`, one bag per point (B = N * P) or per point and axis.
        weights (Tensor[B, 4]): neighbour weights, one row per bag.
    """
    return nn.functional.embedding_bag(bags, rows, per_sample_weights=weights, mode="sum")


def _single_channel_values(planes: torch.Tensor, neighbours: Neighbours) -> list[torch.Tensor]:
    """The values (Tensor[N, P] each, y0 x0, y0 x1, y1 x0, y1 x1) of the four neighbours in
    one-channel `planes` (Tensor[N, L]), by gathers through shifted views with the one index.
    They stay four tensors: stacking them costs more than the gathers."""
    return [
        torch.gather(planes[:, offset:], 1, neighbours.top_left) for offset in neighbours.offsets
    ]


def _single_channel_sample(
    planes: torch.Tensor, neighbours: Neighbours, with_derivative: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The samples (Tensor[N, P]) of one-channel `planes` (Tensor[N, L]) and, if asked, their
    derivative with respect to the pixel coordinates x and y (Tensor[N, 2, P])."""
    top_left, top_right, bottom_left, bottom_right = _single_channel_values(planes, neighbours)
    fraction_x, fraction_y = neighbours.fraction.unbind(1)
    top = torch.lerp(top_left, top_right, fraction_x)
    bottom = torch.lerp(bottom_left, bottom_right, fraction_x)
    output = torch.lerp(top, bottom, fraction_y)
    if not with_derivative:
        return output, None
    # d out / d x: the x steps of the two rows, interpolated along y; d out / d y: the step
    # between the interpolated rows.
    along_x = torch.lerp(top_right - top_left, bottom_right - bottom_left, fraction_y)
    return output, torch.stack((along_x, bottom.sub_(top)), dim=1)


class SampleContext(NamedTuple):
    """What the forward and the backward both derive from the grid and the input; the training
    path computes it once, in the forward, and hands it to the backward."""

    neighbours: Neighbours
    slope: torch.Tensor  # (N, 2, P) or (1, 2, 1): d pixel coordinate / d grid coordinate
    # What the grid gradient reads: for one channel d out / d (x, y) (Tensor[N, 2, P]), which
    # the forward gets almost for free from the neighbour values; for more, `padded_rows`.
    # None where only the input gradient is wanted.
    grid_source: torch.Tensor | None


def grid_points(
    input: torch.Tensor, grid: torch.Tensor, padding_mode: str, align_corners: bool
) -> tuple[Neighbours, torch.Tensor]:
    """The neighbours of the grid points and d(pixel) / d(grid)."""
    height, width = input.shape[2:]
    # (N, 2, P): x and y apart, so that every elementwise op below runs over long rows.
    coords = grid.reshape(grid.shape[0], grid.shape[1] * grid.shape[2], 2).transpose(1, 2)
    pixel, slope = source_coordinates(coords, height, width, padding_mode, align_corners)
    return bilinear_neighbours(pixel, height, width), slope


def sample_at(
    input: torch.Tensor,
    neighbours: Neighbours,
    out_height: int,
    out_width: int,
    with_grid_source: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The bilinear samples (Tensor[N, C, H, W]) of `input` at the neighbours' points and, if
    asked, the `SampleContext.grid_source` computed on the way."""
    batch, channels, height, width = input.shape
    if channels == 1:
        planes = padded_planes(input).squeeze(1)
        output, derivative = _single_channel_sample(planes, neighbours, with_grid_source)
        return output.view(batch, 1, out_height, out_width), derivative
    rows = padded_rows(input)
    bags = _bags(neighbours, height, width)
    weights = torch.stack(bilinear_weights(neighbours.fraction), dim=2).view(-1, 4)
    output = weighted_bag_sum(rows, bags, weights)
    output = output.view(batch, out_height, out_width, channels).permute(0, 3, 1, 2).contiguous()
    return output, rows if with_grid_source else None


def bilinear_sample_forward(
    input: torch.Tensor, grid: torch.Tensor, padding_mode: str, align_corners: bool
) -> torch.Tensor:
    """Bilinearly sample `input` at `grid`.

    Args:
        input (Tensor[N, C, H_in, W_in]): the map to sample.
        grid (Tensor[N, H, W, 2]): sampling points (x, y) in [-1, 1] coordinates of `input`.
        padding_mode (str): "zeros", "border" or "reflection".
        align_corners (bool): whether -1 and 1 are the centres (True) or the outer edges (False)
            of the corner pixels.

    Returns:
        Tensor[N, C, H, W]
    """
    neighbours, _ = grid_points(input, grid, padding_mode, align_corners)
    return sample_at(input, neighbours, grid.shape[1], grid.shape[2], with_grid_source=False)[0]


def bilinear_sample_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    grid: torch.Tensor,
    padding_mode: str,
    align_corners: bool,
    need_input_grad: bool = True,
    need_grid_grad: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `bilinear_sample_forward` with respect to its input and grid.

    Args:
        grad_output (Tensor[N, C, H, W]): gradient of the loss with respect to the output.
        input (Tensor[N, C, H_in, W_in]), grid (Tensor[N, H, W, 2]), padding_mode (str),
        align_corners (bool): the forward's arguments.
        need_input_grad, need_grid_grad (bool): compute that gradient (default True); a gradient
            not asked for is returned as None.

    Returns:
        (Tensor[N, C, H_in, W_in] | None, Tensor[N, H, W, 2] | None): grad_input, grad_grid.
    """
    neighbours, slope = grid_points(input, grid, padding_mode, align_corners)
    grid_source = None
    if need_grid_grad:
        if input.shape[1] == 1:
            planes = padded_planes(input).squeeze(1)
            grid_source = _single_channel_sample(planes, neighbours, with_derivative=True)[1]
        else:
            grid_source = padded_rows(input)
    context = SampleContext(neighbours, slope, grid_source)
    return gradients_from_context(
        grad_output, context, input.shape, need_input_grad, need_grid_grad
    )


def gradients_from_context(
    grad_output: torch.Tensor,
    context: SampleContext,
    input_shape,
    need_input_grad: bool,
    need_grid_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`bilinear_sample_backward` from the forward's `SampleContext`."""
    batch, channels, height, width = input_shape
    out_height, out_width = grad_output.shape[2:]
    points = out_height * out_width
    grad_planes = grad_output.reshape(batch, channels, points)
    neighbours = context.neighbours
    grad_input = None
    if need_input_grad:
        grad_input = _input_gradient(grad_planes, neighbours, height, width)
    grad_grid = None
    if need_grid_grad:
        # d out / d x and d out / d y: the neighbour differences, weighted, against the output
        # gradient summed over channels.
        if channels == 1:
            grad_pixel = context.grid_source * grad_planes
            grad_grid = grad_pixel.mul_(context.slope).transpose(1, 2)
        else:
            # Per axis, the neighbour rows weighted by d weight / d axis in one bag sum, then a
            # batched dot product with the output gradient's rows. The axes take turns rather
            # than sharing one bag sum: a buffer over 32 MB is not reused by the allocator but
            # mapped fresh, and its page faults cost more than the second call.
            bags = _bags(neighbours, height, width)
            grad_rows = grad_output.permute(0, 2, 3, 1).reshape(batch * points, channels, 1)
            grad_pixel = torch.stack(
                [
                    torch.bmm(
                        weighted_bag_sum(
                            context.grid_source, bags, axis_steps.view(-1, 4)
                        ).unsqueeze(1),
                        grad_rows,
                    ).view(batch, points)
                    for axis_steps in weight_steps(neighbours.fraction)
                ],
                dim=2,
            )
            grad_grid = grad_pixel.mul_(context.slope.transpose(1, 2))
        grad_grid = grad_grid.reshape(batch, out_height, out_width, 2)
    return grad_input, grad_grid


def _input_gradient(
    grad_planes: torch.Tensor,
    neighbours: Neighbours,
    height: int,
    width: int,
) -> torch.Tensor:
    """Tensor[N, C, H, W]: each output gradient (Tensor[N, C, P]) scatter-added into its four
    neighbours with their weights wy * wx."""
    batch, channels = grad_planes.shape[:2]
    grad_padded = grad_planes.new_zeros(batch, channels, (height + 2 * PAD) * (width + 2 * PAD))
    index = neighbours.top_left.unsqueeze(1).expand_as(grad_planes)
    # One scatter per neighbour into the plane shifted by its offset, its source in one reused
    # buffer of the output's size; within an image plane the scatter stays in cache.
    contribution = torch.empty_like(grad_planes)
    for offset, weight in zip(neighbours.offsets, bilinear_weights(neighbours.fraction)):
        torch.mul(grad_planes, weight.unsqueeze(1), out=contribution)
        grad_padded[:, :, offset:].scatter_add_(2, index, contribution)
    grad_padded = grad_padded.view(batch, channels, height + 2 * PAD, width + 2 * PAD)
    return grad_padded[:, :, PAD : PAD + height, PAD : PAD + width]
