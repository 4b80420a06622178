"""The CNN classifier used behind the spatial transformer and, wider, as the plain baseline."""

from __future__ import annotations

import torch
from torch import nn

from stn_serve.models.localisation import pooled_size


class ConvClassifier(nn.Module):
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool), then hidden and output layers.

    Block i has `width * 2**i` channels.

    Args:
        in_channels: C of the input.
        input_size: (H, W) of the input; fixed, so the flatten size is known at build time.
        num_classes: K.
        width, depth, hidden, dropout: see `ModelConfig`.
    """

    def __init__(
        self,
        in_channels: int,
        input_size: tuple[int, int],
        num_classes: int,
        width: int,
        depth: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        blocks = []
        channels = in_channels
        for index in range(depth):
            out = width * 2**index
            blocks += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*blocks)
        height, width_out = pooled_size(input_size, depth)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width_out, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (Tensor[N, C, H, W], normalised) -> logits (Tensor[N, K])."""
        return self.head(self.features(image))
