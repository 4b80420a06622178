"""Argument checks shared by the ops: each error names what was received and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from stn_serve.errors import InvalidInputError


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(size)) for size in shape) + "]"


def require_floating(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise InvalidInputError(f"{name} must have a floating dtype, got {tensor.dtype}")


def require_same_dtype(
    name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor
) -> None:
    if tensor.dtype != other.dtype:
        raise InvalidInputError(
            f"{name} must have the dtype of {other_name} ({other.dtype}), got {tensor.dtype}"
        )


def output_size(size: Sequence[int], batch: int) -> tuple[int, int]:
    """(H, W) of a grid from `size` = (N, C, H, W), checked against the parameters' batch."""
    size = list(size)
    if len(size) != 4 or any(int(value) < 1 for value in size[1:]):
        raise InvalidInputError(
            f"size must be (N, C, H, W) with C, H, W >= 1, got {tuple(int(v) for v in size)}"
        )
    if size[0] != batch:
        raise InvalidInputError(
            f"size[0] must equal the batch of the transform parameters ({int(batch)}), "
            f"got {int(size[0])}"
        )
    return size[2], size[3]
