"""Settings every ONNX Runtime session in a repository shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

from stn_serve.errors import InvalidInputError

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
#: Triton's model control modes (see `ModelControlOptions`).
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
#: `ModelControlOptions.load_models` entry that means every model in the repository.
ALL_MODELS = "*"


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created.

    device: "auto" (CUDA where it loads, else CPU), "cuda" (fail when CUDA cannot be used) or "cpu".
    intra_op_threads / inter_op_threads: ONNX Runtime thread pools; 0 lets it choose.
    graph_optimization: one of `GRAPH_OPTIMIZATIONS`.
    spinning: let ONNX Runtime's pool threads spin-wait for work between runs. Off by default: a
        server's runs come irregularly, and each spinning thread keeps a core busy that the
        request handling needs.
    warmup_batch_sizes: batch sizes run once on zeros before a model reports ready.
    """

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    spinning: bool = False
    warmup_batch_sizes: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class ModelControlOptions:
    """What may change the served models while the server runs (Triton's model control).

    mode: "none" loads every model at start and changes nothing afterwards; "poll" also rescans
        the repository every `poll_s` seconds and on request (SIGHUP); "explicit" loads only
        `load_models` at start, then only load and unload requests change what is served.
    poll_s: seconds between rescans in poll mode.
    load_models: in explicit mode, the models loaded at start ("*": every model).
    """

    mode: str = "none"
    poll_s: float = 15.0
    load_models: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODEL_CONTROL_MODES:
            raise InvalidInputError(
                f"model control mode must be one of {list(MODEL_CONTROL_MODES)}, got {self.mode!r}"
            )
        if not (math.isfinite(self.poll_s) and self.poll_s > 0):
            raise InvalidInputError(f"poll_s must be a positive number, got {self.poll_s}")
        if self.load_models and self.mode != "explicit":
            raise InvalidInputError(
                f"models to load at start ({list(self.load_models)}) need mode 'explicit'; "
                f"mode {self.mode!r} loads every model"
            )
