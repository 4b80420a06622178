"""The two models a `ModelConfig` builds: `STCNN` and the `CNNBaseline`, with a shared output type.

Both take raw pixels in [0, 1] and normalise inside, so an exported graph needs no preprocessing.
Forward has no control flow that depends on tensor values (torch.onnx dynamo and torch.compile).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stn_serve.models.classifier import ConvClassifier
from stn_serve.models.config import ModelConfig
from stn_serve.models.localisation import LocalisationNet
from stn_serve.models.transformer import SpatialTransformer
from stn_serve.ops.transforms import make_transform


class ModelOutput(NamedTuple):
    """logits (Tensor[N, K]), crop (Tensor[N, C, h, w], values of the input's range), theta (Tensor[N, P])."""

    logits: torch.Tensor
    crop: torch.Tensor
    theta: torch.Tensor


class Normalise(nn.Module):
    """(image - mean) / std per channel; mean and std are config values, not weights."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


def _classifier(config: ModelConfig) -> ConvClassifier:
    return ConvClassifier(
        config.in_channels,
        config.classifier_size,
        config.num_classes,
        config.width,
        config.depth,
        config.hidden,
        config.dropout,
    )


class STCNN(nn.Module):
    """Spatial transformer, then CNN classifier on the crop."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.normalise = Normalise(config.mean, config.std)
        identity = make_transform(
            config.transform, config.crop_size, align_corners=config.align_corners
        ).identity_params()
        localisation = LocalisationNet(
            config.in_channels,
            config.input_size,
            identity,
            config.loc_width,
            config.loc_depth,
            config.loc_hidden,
        )
        self.transformer = SpatialTransformer(
            localisation,
            config.transform,
            config.crop_size,
            config.padding_mode,
            config.align_corners,
        )
        self.classifier = _classifier(config)

    def localisation_parameters(self) -> list[nn.Parameter]:
        """Parameters of the localisation net (trained with their own learning-rate multiplier)."""
        return list(self.transformer.localisation.parameters())

    def forward(self, image: torch.Tensor) -> ModelOutput:
        """image (Tensor[N, C, H, W], values in [0, 1]) -> ModelOutput."""
        crop, theta = self.transformer(
            image, loc_input=self.normalise(image)
        )  # (N, C, h, w), (N, P)
        return ModelOutput(self.classifier(self.normalise(crop)), crop, theta)


class CNNBaseline(nn.Module):
    """The classifier alone on the whole input; the crop is the input and theta is empty."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.normalise = Normalise(config.mean, config.std)
        self.classifier = _classifier(config)

    def localisation_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, image: torch.Tensor) -> ModelOutput:
        """image (Tensor[N, C, H, W], values in [0, 1]) -> ModelOutput with theta Tensor[N, 0]."""
        theta = image.new_zeros((image.shape[0], 0))
        return ModelOutput(self.classifier(self.normalise(image)), image, theta)
