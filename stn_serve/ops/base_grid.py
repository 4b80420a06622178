"""The regular output lattice that every grid generator maps through its transform."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stn_serve.errors import InvalidInputError


def normalised_positions(
    steps: int, align_corners: bool, dtype: torch.dtype, device
) -> torch.Tensor:
    """Tensor[steps]: pixel positions along one axis in [-1, 1] coordinates.

    `align_corners=True` puts -1 and 1 on the centres of the first and last pixel
    (`linspace(-1, 1, steps)`); `False` puts them on the outer edges of those pixels
    (`linspace(-1, 1, steps) * (steps - 1) / steps`). One step gives `[0]`.
    """
    if steps <= 1:
        return torch.zeros(steps, dtype=dtype, device=device)
    positions = torch.linspace(-1, 1, steps, dtype=dtype, device=device)
    if not align_corners:
        positions = positions * ((steps - 1) / steps)
    return positions


def base_coordinates(
    height: int, width: int, align_corners: bool, dtype: torch.dtype, device
) -> torch.Tensor:
    """Tensor[height * width, 3]: homogeneous output positions (x, y, 1), x varying fastest."""
    xs = normalised_positions(width, align_corners, dtype, device)
    ys = normalised_positions(height, align_corners, dtype, device)
    base = torch.ones(height, width, 3, dtype=dtype, device=device)
    base[..., 0] = xs
    base[..., 1] = ys.unsqueeze(-1)
    return base.view(height * width, 3)


class GridGenerator(nn.Module):
    """Base of the grid-generator modules: an output size (h, w) and the align_corners flag."""

    def __init__(self, out_size: Sequence[int], align_corners: bool = False):
        super().__init__()
        if len(out_size) != 2 or any(int(v) < 1 for v in out_size):
            raise InvalidInputError(
                f"out_size must be (h, w) with h, w >= 1, got {tuple(out_size)}"
            )
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.align_corners = bool(align_corners)

    def size_for(self, params: torch.Tensor) -> tuple[int, int, int, int]:
        """The (N, C, h, w) size argument of a grid op for a batch of parameters."""
        return (params.shape[0], 1, *self.out_size)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, align_corners={self.align_corners}"
