"""What the client returns: plain dataclasses and numpy arrays, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer.

    Attributes:
        top_k: classes by decreasing probability.
        crop (ndarray[C, h, w] float32 in [0, 1]): what the spatial transformer produced.
        theta (ndarray[P] float32): the transform parameters (empty for a plain CNN).
        model, version: the model that answered.
    """

    top_k: list[ClassScore]
    crop: np.ndarray
    theta: np.ndarray
    model: str
    version: int

    @property
    def label(self) -> str:
        """The most probable class's label."""
        return self.top_k[0].label


@dataclass(frozen=True)
class ModelInfo:
    """A served model version, as `list_models` and `describe` report it."""

    name: str
    version: int
    versions: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    crop_shape: tuple[int, ...] = ()
    transform: str = ""
    num_params: int = 0
    execution_provider: str = ""
    ready: bool = False
