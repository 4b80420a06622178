"""`ModelConfig`: everything needed to rebuild a model, stored in checkpoints as a plain dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from stn_serve.contract import PADDING_MODES, TRANSFORMS
from stn_serve.errors import InvalidInputError

ARCHS = ("stcnn", "cnn")


@dataclass
class ModelConfig:
    """Architecture and input contract of an ST-CNN or its plain-CNN baseline.

    Fields:
        arch: "stcnn" (spatial transformer, then CNN classifier) or "cnn" (classifier alone).
        in_channels: C of the input image.
        input_size: (H, W) of the input image.
        num_classes: K, the number of logits.
        transform: transform family of the spatial transformer (ignored by "cnn").
        crop_size: (h, w) of the transformer's output; None means the input size.
        padding_mode: what the sampler reads outside the image: zeros | border | reflection.
        align_corners: the grid convention shared by grid generator and sampler.
        mean, std: per-channel normalisation applied inside the model (C values each).
        width: channels of the classifier's first conv block; each further block doubles it.
        depth: number of conv blocks (conv, batch norm, ReLU, 2x2 max-pool) in the classifier.
        hidden: units of the classifier's fully connected hidden layer.
        loc_width: channels of the localisation net's conv layers.
        loc_depth: number of conv blocks (conv, 2x2 max-pool, ReLU) in the localisation net.
        loc_hidden: units of the localisation net's fully connected hidden layer.
        dropout: dropout probability before the classifier's last layer.
    """

    arch: str = "stcnn"
    in_channels: int = 1
    input_size: tuple[int, int] = (28, 28)
    num_classes: int = 10
    transform: str = "affine"
    crop_size: tuple[int, int] | None = None
    padding_mode: str = "zeros"
    align_corners: bool = False
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    width: int = 16
    depth: int = 2
    hidden: int = 128
    loc_width: int = 16
    loc_depth: int = 2
    loc_hidden: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.input_size = _pair("input_size", self.input_size)
        self.crop_size = (
            self.input_size if self.crop_size is None else _pair("crop_size", self.crop_size)
        )
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self._validate()

    def _validate(self) -> None:
        _choice("arch", self.arch, ARCHS)
        _choice("transform", self.transform, TRANSFORMS)
        _choice("padding_mode", self.padding_mode, PADDING_MODES)
        for name in (
            "in_channels",
            "num_classes",
            "width",
            "depth",
            "hidden",
            "loc_width",
            "loc_depth",
            "loc_hidden",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(
                    f"model config: {name} must be a positive integer, got {value!r}"
                )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.in_channels:
                raise InvalidInputError(
                    f"model config: {name} needs one value per channel ({self.in_channels}), got {list(values)}"
                )
        if min(self.std) <= 0:
            raise InvalidInputError(f"model config: std values must be > 0, got {list(self.std)}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        # Each conv block halves the feature map; at least one pixel must survive the last one.
        _fits("input_size", self.input_size, self.loc_depth if self.arch == "stcnn" else self.depth)
        _fits("crop_size", self.crop_size, self.depth)

    @property
    def classifier_size(self) -> tuple[int, int]:
        """(h, w) the classifier sees: the crop for an ST-CNN, the whole input for a CNN."""
        return self.crop_size if self.arch == "stcnn" else self.input_size

    def to_dict(self) -> dict:
        """Plain types only (lists, not tuples), so `torch.load(weights_only=True)` reads it back."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of `to_dict`; unknown or missing-required keys raise InvalidInputError."""
        if not isinstance(data, dict):
            raise InvalidInputError(f"model config must be a dict, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"model config has unknown keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**data)

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _pair(name: str, value) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"model config: {name} must be (height, width), got {value!r}"
        ) from None
    if len(pair) != 2 or min(pair) < 1:
        raise InvalidInputError(
            f"model config: {name} must be two positive integers (height, width), got {value!r}"
        )
    return pair


def _choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(
            f"model config: {name} must be one of {list(choices)}, got {value!r}"
        )


def _fits(name: str, size: tuple[int, int], blocks: int) -> None:
    if min(size) < 2**blocks:
        raise InvalidInputError(
            f"model config: {name} {list(size)} is too small for {blocks} pooling blocks "
            f"(needs at least {2**blocks} pixels per side)"
        )
