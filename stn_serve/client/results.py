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
class VersionState:
    """A model version's state on the server: "LOADING", "READY", "UNLOADING" or
    "UNAVAILABLE" (Triton's names), with the reason it is unavailable. Version 0 stands for
    the model's config.pbtxt when the server refused it."""

    version: int
    state: str
    reason: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """A model, as `list_models` and `describe` report it: a ready version (`ready`) with its
    labels and shapes, or (from `list_models`, for a model with no version ready) its name
    alone; `states` holds every version the server knows, ready or not."""

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
    states: list[VersionState] = field(default_factory=list)
