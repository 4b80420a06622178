"""Settings every ONNX Runtime session in a repository shares."""

from __future__ import annotations

from dataclasses import dataclass

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


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
