"""Bilinear sampling of a feature map at a grid of points, with a hand-written backward.

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
over long rows. Neighbour indices point into the input padded with two zero pixels on each side
and are clamped into that padding, so a neighbour outside the input reads zero with no masks.
A one-channel input gathers the four neighbour values with one `gather` and interpolates with
two `lerp`s. A multi-channel input gathers rows of a channels-last copy with
`embedding_bag(mode="sum", per_sample_weights=w)` over bags of the four neighbours, which fuses
the gather and the weighted sum: out[p] = sum_k w[p, k] * rows[index[p, k]] (in ONNX terms
Gather, Mul, ReduceSum over the bag axis). The input gradient is `scatter_add_` of the weighted
output gradient into the padded planes, then the padding is cut off. The backward recomputes the
neighbours from the grid rather than storing [N, 4, P] tensors from the forward, as torch's own
kernel does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stn_serve.errors import InvalidInputError
from stn_serve.ops._checks import require_floating, require_same_dtype, shape_text

PADDING_MODES = ("zeros", "border", "reflection")

# The sampled map is padded with this many zero pixels on each side, so that every clamped
# neighbour index stays inside it: neighbours that fall outside the input read (and receive) zero.
_PAD = 2


def check_sample_inputs(input: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> None:
    """Raise `InvalidInputError` (a ValueError) naming what is wrong with the arguments."""
    require_floating("input", input)
    require_floating("grid", grid)
    if input.dim() != 4:
        raise InvalidInputError(f"input must be [N, C, H, W], got {shape_text(input.shape)}")
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
    # of a pixel centre (which matters for the gradient there).
    # Written to a fresh contiguous tensor, so a transposed view of the grid costs no extra copy.
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
    x0 = floor(x) and x1 = x0 + 1, and the fractions x - x0, y - y0."""

    index: torch.Tensor  # (N, 4, P) int64, into one image's plane of `padded_planes`
    fraction: torch.Tensor  # (N, 2, P): x - x0 then y - y0, the weights of x1 and y1

    def axis_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Tensor[N, 2, P], Tensor[N, 2, P]): the weights (w0, w1) of x0, x1 and of y0, y1."""
        weight = torch.stack((1 - self.fraction, self.fraction), dim=2)  # (N, axis, 2, P)
        return weight[:, 0], weight[:, 1]


def bilinear_weights(weight_x: torch.Tensor, weight_y: torch.Tensor) -> torch.Tensor:
    """Tensor[N, 4, P]: the weight wy * wx of each neighbour, from the per-axis weights."""
    return (weight_y.unsqueeze(2) * weight_x.unsqueeze(1)).flatten(1, 2)


def weight_steps(weight_x: torch.Tensor, weight_y: torch.Tensor) -> torch.Tensor:
    """Tensor[N, 2, 4, P]: d weight / d x = (-wy0, wy0, -wy1, wy1) and
    d weight / d y = (-wx0, -wx1, wx0, wx1) of each neighbour."""
    sign = weight_x.new_tensor([-1.0, 1.0])
    along_x = weight_y.unsqueeze(2) * sign.view(1, 1, 2, 1)
    along_y = sign.view(1, 2, 1, 1) * weight_x.unsqueeze(1)
    return torch.stack((along_x.flatten(1, 2), along_y.flatten(1, 2)), dim=1)


def bilinear_neighbours(pixel: torch.Tensor, height: int, width: int) -> Neighbours:
    """Neighbours and weights of pixel coordinates (Tensor[N, 2, P], x then y)."""
    corner = torch.floor(pixel)
    fraction = pixel - corner
    padded_width = width + 2 * _PAD
    # Clamping into the padding keeps far-away points in range; a clamped neighbour lies in the
    # zero padding either way, because x0 < -2 puts both x0 and x1 left of the input.
    corner.clamp_(min=-_PAD).clamp_(max=pixel.new_tensor([width, height]).view(1, 2, 1))
    top_left = torch.add(corner[:, :1], corner[:, 1:], alpha=padded_width).to(torch.int64)
    offsets = torch.tensor([0, 1, padded_width, padded_width + 1], device=pixel.device)
    offsets = (offsets + _PAD * padded_width + _PAD).view(1, 4, 1)
    # Adding to the expanded index is several times faster than broadcasting both operands.
    index = top_left.expand(-1, 4, -1) + offsets
    return Neighbours(index, fraction)


def padded_planes(input: torch.Tensor) -> torch.Tensor:
    """Tensor[N, C, (H + 4) * (W + 4)]: each image plane with two zero pixels around it, so that
    every clamped neighbour index reads a pixel or zero."""
    return nn.functional.pad(input, (_PAD, _PAD, _PAD, _PAD)).flatten(2)


def padded_rows(input: torch.Tensor) -> torch.Tensor:
    """Tensor[N * (H + 4) * (W + 4), C]: `padded_planes` channels-last, one row per pixel."""
    batch, channels, height, width = input.shape
    rows = input.new_empty(batch, height + 2 * _PAD, width + 2 * _PAD, channels)
    # Zero only the border: filling the whole map first would write it twice.
    rows[:, :_PAD] = 0
    rows[:, _PAD + height :] = 0
    rows[:, _PAD : _PAD + height, :_PAD] = 0
    rows[:, _PAD : _PAD + height, _PAD + width :] = 0
    rows[:, _PAD : _PAD + height, _PAD : _PAD + width] = input.permute(0, 2, 3, 1)
    return rows.view(-1, channels)


def _bags(index: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tensor[N * P, 4]: the neighbours' rows in `padded_rows`, one bag of four per point."""
    plane_size = (height + 2 * _PAD) * (width + 2 * _PAD)
    image_start = torch.arange(index.shape[0], device=index.device).view(-1, 1, 1) * plane_size
    return (index + image_start).transpose(1, 2).reshape(-1, 4)


def weighted_bag_sum(rows: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Tensor[N * P, C]: sum over the four neighbours k of weights[n, k, p] * rows[bags[., k]].

    The gather of the neighbour rows and their weighted sum in one pass (an embedding bag sum),
    with no [N * P, 4, C] intermediate.

    Args:
        rows (Tensor[L, C]): `padded_rows`.
        bags (Tensor[N * P, 4], int64): `_bags`.
        weights (Tensor[N, 4, P]): neighbour weights.
    """
    per_row = weights.transpose(1, 2).reshape(-1, 4)
    return nn.functional.embedding_bag(bags, rows, per_sample_weights=per_row, mode="sum")


def _single_channel_values(input: torch.Tensor, neighbours: Neighbours) -> torch.Tensor:
    """Tensor[N, 2, 2, P]: the neighbour values (y, x) of a one-channel input, one gather."""
    values = padded_planes(input).squeeze(1).gather(1, neighbours.index.flatten(1))
    return values.view(input.shape[0], 2, 2, neighbours.index.shape[2])


def _neighbours(input: torch.Tensor, grid: torch.Tensor, padding_mode: str, align_corners: bool):
    """The neighbours of the grid points and d(pixel) / d(grid)."""
    height, width = input.shape[2:]
    # (N, 2, P): x and y apart, so that every elementwise op below runs over long rows.
    coords = grid.reshape(grid.shape[0], grid.shape[1] * grid.shape[2], 2).transpose(1, 2)
    pixel, slope = source_coordinates(coords, height, width, padding_mode, align_corners)
    return bilinear_neighbours(pixel, height, width), slope


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
    batch, channels, height, width = input.shape
    out_height, out_width = grid.shape[1:3]
    neighbours, _ = _neighbours(input, grid, padding_mode, align_corners)
    if channels == 1:
        # Interpolate along x in both neighbour rows at once, then along y.
        values = _single_channel_values(input, neighbours)
        fraction = neighbours.fraction
        rows = torch.lerp(values[:, :, 0], values[:, :, 1], fraction[:, :1])
        output = torch.lerp(rows[:, 0], rows[:, 1], fraction[:, 1])
        return output.view(batch, 1, out_height, out_width)
    bags = _bags(neighbours.index, height, width)
    weights = bilinear_weights(*neighbours.axis_weights())
    output = weighted_bag_sum(padded_rows(input), bags, weights)
    return output.view(batch, out_height, out_width, channels).permute(0, 3, 1, 2).contiguous()


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
    batch, channels, height, width = input.shape
    neighbours, slope = _neighbours(input, grid, padding_mode, align_corners)
    points = grid.shape[1] * grid.shape[2]
    grad_planes = grad_output.reshape(batch, channels, points)
    weight_x, weight_y = neighbours.axis_weights()
    grad_input = None
    if need_input_grad:
        grad_input = _input_gradient(
            grad_planes, neighbours.index, weight_x, weight_y, height, width
        )
    grad_grid = None
    if need_grid_grad:
        # d out / d x and d out / d y: the neighbour differences, weighted, against the output
        # gradient summed over channels. (N, 2, P)
        if channels == 1:
            values = _single_channel_values(input, neighbours)
            # In-place products and sums written into their destination: fewer fresh buffers.
            grad_pixel = grad_planes.new_empty(batch, 2, points)
            torch.sum((values[:, :, 1] - values[:, :, 0]).mul_(weight_y), 1, out=grad_pixel[:, 0])
            torch.sum((values[:, 1] - values[:, 0]).mul_(weight_x), 1, out=grad_pixel[:, 1])
            grad_pixel.mul_(grad_planes)
        else:
            rows = padded_rows(input)
            bags = _bags(neighbours.index, height, width)
            grad_rows = grad_output.permute(0, 2, 3, 1).reshape(batch * points, channels, 1)
            grad_pixel = (
                torch.stack(
                    [
                        torch.bmm(weighted_bag_sum(rows, bags, axis_steps).unsqueeze(1), grad_rows)
                        for axis_steps in weight_steps(weight_x, weight_y).unbind(1)
                    ]
                )
                .view(2, batch, points)
                .transpose(0, 1)
            )
        grad_grid = grad_pixel.mul_(slope).transpose(1, 2).reshape(grid.shape)
    return grad_input, grad_grid


def _input_gradient(
    grad_planes: torch.Tensor,
    index: torch.Tensor,
    weight_x: torch.Tensor,
    weight_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """Tensor[N, C, H, W]: each output gradient (Tensor[N, C, P]) scatter-added into its four
    neighbours (`Neighbours.index`) with their weights wy * wx."""
    batch, channels = grad_planes.shape[:2]
    grad_padded = grad_planes.new_zeros(batch, channels, (height + 2 * _PAD) * (width + 2 * _PAD))
    if channels == 1:
        rows = (weight_y * grad_planes).unsqueeze(2)  # (N, y, 1, P)
        contributions = (rows * weight_x.unsqueeze(1)).flatten(1)
        grad_padded.squeeze(1).scatter_add_(1, index.flatten(1), contributions)
    else:
        # One scatter per neighbour, its source in one reused buffer of the output's size
        # instead of four times it; within an image plane the scatter stays in cache.
        contribution = torch.empty_like(grad_planes)
        weights = bilinear_weights(weight_x, weight_y)
        for neighbour, weight in zip(index.unbind(1), weights.unbind(1)):
            torch.mul(grad_planes, weight.unsqueeze(1), out=contribution)
            target = neighbour.unsqueeze(1).expand_as(grad_planes)
            grad_padded.scatter_add_(2, target, contribution)
    grad_padded = grad_padded.view(batch, channels, height + 2 * _PAD, width + 2 * _PAD)
    return grad_padded[:, :, _PAD : _PAD + height, _PAD : _PAD + width]


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
    grad_input, grad_grid = bilinear_sample_backward(
        grad_output,
        input,
        grid,
        ctx.padding_mode,
        ctx.align_corners,
        need_input_grad=ctx.needs_input_grad[0],
        need_grid_grad=ctx.needs_input_grad[1],
    )
    return grad_input, grad_grid, None, None


_grid_sample_op.register_autograd(_backward, setup_context=_setup_context)


def grid_sample(
    input: torch.Tensor,
    grid: torch.Tensor,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Bilinearly sample `input` at `grid`, like `torch.nn.functional.grid_sample(mode="bilinear")`.

    Runs `torch.ops.stn.grid_sample`, whose forward is `bilinear_sample_forward` and whose
    backward is `bilinear_sample_backward`.

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
    return torch.ops.stn.grid_sample(input, grid, padding_mode, align_corners)


class GridSample(nn.Module):
    """`grid_sample` as a module: `forward(input, grid)` samples with the fixed settings."""

    def __init__(self, padding_mode: str = "zeros", align_corners: bool = False):
        super().__init__()
        check_padding_mode(padding_mode)
        self.padding_mode = padding_mode
        self.align_corners = align_corners

    def forward(self, input: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return grid_sample(input, grid, self.padding_mode, self.align_corners)

    def extra_repr(self) -> str:
        return f"padding_mode={self.padding_mode!r}, align_corners={self.align_corners}"
