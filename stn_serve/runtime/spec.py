"""`model.json`: what the serving side knows about an exported model (see docs/contracts.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stn_serve.errors import InvalidInputError

FORMAT = "stn-serve-model/1"
INPUT_NAME = "image"
# Output name -> rank without the batch dimension.
OUTPUT_RANKS = {"logits": 1, "probabilities": 1, "crop": 3, "theta": 1}
OUTPUT_NAMES = tuple(OUTPUT_RANKS)


@dataclass(frozen=True)
class ModelSpec:
    """One model version as `model.json` describes it."""

    name: str
    version: int
    labels: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    output_shapes: dict[str, tuple[int, ...]]  # name -> shape without the batch dimension
    transform: str

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return self.output_shapes["crop"]

    @property
    def num_params(self) -> int:
        return self.output_shapes["theta"][0]


def _non_negative_ints(value, what: str, length: int, path: Path) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise InvalidInputError(
            f"{path}: {what} must be a list of {length} non-negative ints, got {value!r}"
        )
    return tuple(value)


def parse_spec(data: dict, path: Path) -> ModelSpec:
    """Check a parsed `model.json` against the contract; errors name the field and the file."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise InvalidInputError(f"{path}: format must be {FORMAT!r}, got {data.get('format')!r}")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{path}: name must be a non-empty string, got {name!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInputError(f"{path}: version must be a positive int, got {version!r}")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise InvalidInputError(
            f"{path}: labels must be a non-empty list of strings, got {labels!r}"
        )
    model_input = data.get("input")
    if not isinstance(model_input, dict) or model_input.get("name", INPUT_NAME) != INPUT_NAME:
        raise InvalidInputError(
            f"{path}: input must be an object named {INPUT_NAME!r}, got {model_input!r}"
        )
    input_shape = _non_negative_ints(model_input.get("shape"), "input.shape [C, H, W]", 3, path)
    outputs = data.get("outputs")
    if not isinstance(outputs, dict) or set(outputs) != set(OUTPUT_RANKS):
        got = sorted(outputs) if isinstance(outputs, dict) else outputs
        raise InvalidInputError(
            f"{path}: outputs must have exactly {sorted(OUTPUT_RANKS)}, got {got!r}"
        )
    output_shapes = {
        key: _non_negative_ints(outputs[key], f"outputs.{key}", rank, path)
        for key, rank in OUTPUT_RANKS.items()
    }
    for key in ("logits", "probabilities"):
        if output_shapes[key] != (len(labels),):
            raise InvalidInputError(
                f"{path}: outputs.{key} must be [{len(labels)}] (one per label), got {list(output_shapes[key])}"
            )
    if output_shapes["crop"][0] != input_shape[0]:
        raise InvalidInputError(
            f"{path}: outputs.crop must have {input_shape[0]} channels like the input, "
            f"got {list(output_shapes['crop'])}"
        )
    transform = data.get("transform", "")
    if not isinstance(transform, str):
        raise InvalidInputError(f"{path}: transform must be a string, got {transform!r}")
    return ModelSpec(name, version, tuple(labels), input_shape, output_shapes, transform)


def read_spec(path: Path) -> ModelSpec:
    """Read and check `model.json` at `path`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"{path}: cannot read model.json: {error}") from error
    return parse_spec(data, Path(path))
