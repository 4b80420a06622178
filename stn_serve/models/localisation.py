"""The localisation network: image in, transform parameters out, starting at the identity."""

from __future__ import annotations

import torch
from torch import nn


def pooled_size(size: tuple[int, int], blocks: int) -> tuple[int, int]:
    """(h, w) after `blocks` 2x2 max-pools with floor rounding."""
    height, width = size
    for _ in range(blocks):
        height, width = height // 2, width // 2
    return height, width


class LocalisationNet(nn.Module):
    """Conv blocks (5x5 conv, 2x2 max-pool, ReLU), then two fully connected layers.

    The last layer has zero weights and the family's identity parameters as bias, so before any
    training every input maps to the identity transform and the crop is the (resampled) input.

    Args:
        in_channels: C of the input.
        input_size: (H, W) of the input; fixed, so the flatten size is known at build time.
        identity (Tensor[P]): parameters of the identity transform.
        width: channels of every conv layer.
        depth: number of conv blocks.
        hidden: units of the hidden fully connected layer.
    """

    def __init__(
        self,
        in_channels: int,
        input_size: tuple[int, int],
        identity: torch.Tensor,
        width: int,
        depth: int,
        hidden: int,
    ) -> None:
        super().__init__()
        blocks = []
        channels = in_channels
        for _ in range(depth):
            blocks += [
                nn.Conv2d(channels, width, 5, padding=2),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*blocks)
        height, width_out = pooled_size(input_size, depth)
        self.hidden = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * width_out, hidden), nn.ReLU(inplace=True)
        )
        self.head = nn.Linear(hidden, identity.numel())
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(identity.to(self.head.bias.dtype))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (Tensor[N, C, H, W]) -> theta (Tensor[N, P])."""
        return self.head(self.hidden(self.features(image)))
