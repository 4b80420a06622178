"""`model.json`: what an exported model version says about itself. Export writes it through
`ModelSpec.to_json` and the serving side reads it through `ModelSpec.from_json`, so the document
has one shape. See docs/contracts.md for an example.

The ONNX graph it describes takes `INPUT_NAME` float32 [N, C, H, W] in [0, 1] and returns
`OUTPUT_NAMES`: logits [N, K], probabilities [N, K], crop [N, C, h, w] and theta [N, P] (the
transform's parameter vector; P = 0 for the plain CNN).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stn_serve.contract.choices import NO_TRANSFORM, PADDING_MODES, TRANSFORMS
from stn_serve.errors import InvalidInputError

FORMAT = "stn-serve-model/1"
INPUT_NAME = "image"
INPUT_DTYPE = "float32"
INPUT_RANGE = (0.0, 1.0)
# Output name -> rank without the batch dimension.
OUTPUT_RANKS = {"logits": 1, "probabilities": 1, "crop": 3, "theta": 1}
OUTPUT_NAMES = tuple(OUTPUT_RANKS)


@dataclass(frozen=True)
class ModelSpec:
    """One model version as `model.json` describes it.

    Fields:
        name, version: where it sits in the repository (`<name>/<version>/`).
        labels: class names, one per logit (K of them).
        input_shape: (C, H, W) of the `image` input.
        output_shapes: output name -> shape without the batch dimension.
        transform: the transform family (`TRANSFORMS`), or "none" for the plain CNN.
        padding_mode, align_corners: the sampler's settings.
        mean, std: the per-channel normalisation the graph applies inside.
        opset: the standard ONNX opset of the graph.
        metrics: training figures (e.g. test_accuracy); parity: the torch vs ONNX Runtime figures
            measured at export; versions: the packages that wrote it; created: UTC timestamp.
    """

    name: str
    version: int
    labels: tuple[str, ...]
    input_shape: tuple[int, int, int]
    output_shapes: dict[str, tuple[int, ...]]
    transform: str = NO_TRANSFORM
    padding_mode: str = "zeros"
    align_corners: bool = False
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    opset: int | None = None
    metrics: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def crop_shape(self) -> tuple[int, ...]:
        return self.output_shapes["crop"]

    @property
    def num_params(self) -> int:
        return self.output_shapes["theta"][0]

    def to_json(self) -> dict:
        """The `model.json` document (plain JSON types)."""
        return {
            "name": self.name,
            "version": self.version,
            "format": FORMAT,
            "labels": list(self.labels),
            "input": {
                "name": INPUT_NAME,
                "shape": list(self.input_shape),
                "dtype": INPUT_DTYPE,
                "range": list(INPUT_RANGE),
            },
            "outputs": {name: list(shape) for name, shape in self.output_shapes.items()},
            "transform": self.transform,
            "crop_size": list(self.crop_shape[1:]),
            "padding_mode": self.padding_mode,
            "align_corners": self.align_corners,
            "normalisation": {"mean": list(self.mean), "std": list(self.std)},
            "opset": self.opset,
            "metrics": dict(self.metrics),
            "parity": dict(self.parity),
            "versions": dict(self.versions),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict, path: Path | str = "model.json") -> ModelSpec:
        """Check a parsed `model.json` against the contract; errors name the field and `path`."""
        return _Reader(path).spec(data)

    def dumps(self) -> str:
        """The `model.json` file's text."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> ModelSpec:
        """Read and check the `model.json` at `path`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidInputError(f"{path}: cannot read model.json: {error}") from error
        return cls.from_json(data, path)


class _Reader:
    """Field-by-field checks of a `model.json` document; each error names the field and file."""

    def __init__(self, path):
        self.path = path

    def fail(self, message: str) -> InvalidInputError:
        return InvalidInputError(f"{self.path}: {message}")

    def ints(self, value, what: str, length: int) -> tuple[int, ...]:
        if (
            not isinstance(value, list)
            or len(value) != length
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            raise self.fail(f"{what} must be a list of {length} non-negative ints, got {value!r}")
        return tuple(value)

    def spec(self, data) -> ModelSpec:
        if not isinstance(data, dict):
            raise self.fail(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise self.fail(f"format must be {FORMAT!r}, got {data.get('format')!r}")
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or not name:
            raise self.fail(f"name must be a non-empty string, got {name!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self.fail(f"version must be a positive int, got {version!r}")
        labels = data.get("labels")
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, str) for x in labels)
        ):
            raise self.fail(f"labels must be a non-empty list of strings, got {labels!r}")
        model_input = data.get("input")
        if not isinstance(model_input, dict) or model_input.get("name", INPUT_NAME) != INPUT_NAME:
            raise self.fail(f"input must be an object named {INPUT_NAME!r}, got {model_input!r}")
        input_shape = self.ints(model_input.get("shape"), "input.shape [C, H, W]", 3)
        output_shapes = self.outputs(data.get("outputs"), len(labels), input_shape[0])
        normalisation = data.get("normalisation") or {}
        return ModelSpec(
            name=name,
            version=version,
            labels=tuple(labels),
            input_shape=input_shape,
            output_shapes=output_shapes,
            transform=self.choice(data, "transform", (*TRANSFORMS, NO_TRANSFORM), NO_TRANSFORM),
            padding_mode=self.choice(data, "padding_mode", PADDING_MODES, "zeros"),
            align_corners=self.typed(data, "align_corners", bool, False),
            mean=self.floats(normalisation, "mean", input_shape[0]),
            std=self.floats(normalisation, "std", input_shape[0]),
            opset=self.typed(data, "opset", int, None),
            metrics=self.typed(data, "metrics", dict, {}),
            parity=self.typed(data, "parity", dict, {}),
            versions=self.typed(data, "versions", dict, {}),
            created=self.typed(data, "created", str, ""),
        )

    def outputs(self, outputs, num_classes: int, channels: int) -> dict[str, tuple[int, ...]]:
        if not isinstance(outputs, dict) or set(outputs) != set(OUTPUT_RANKS):
            got = sorted(outputs) if isinstance(outputs, dict) else outputs
            raise self.fail(f"outputs must have exactly {sorted(OUTPUT_RANKS)}, got {got!r}")
        shapes = {
            key: self.ints(outputs[key], f"outputs.{key}", rank)
            for key, rank in OUTPUT_RANKS.items()
        }
        for key in ("logits", "probabilities"):
            if shapes[key] != (num_classes,):
                raise self.fail(
                    f"outputs.{key} must be [{num_classes}] (one per label), got {list(shapes[key])}"
                )
        if shapes["crop"][0] != channels:
            raise self.fail(
                f"outputs.crop must have {channels} channels like the input, "
                f"got {list(shapes['crop'])}"
            )
        return shapes

    def choice(self, data: dict, key: str, choices: tuple[str, ...], default: str) -> str:
        value = data.get(key, default)
        if value not in choices:
            raise self.fail(f"{key} must be one of {list(choices)}, got {value!r}")
        return value

    def typed(self, data: dict, key: str, kind: type, default):
        value = data.get(key, default)
        if value is default:
            return value
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"{key} must be a {kind.__name__}, got {value!r}")
        return value

    def floats(self, normalisation, key: str, channels: int) -> tuple[float, ...]:
        if not isinstance(normalisation, dict):
            raise self.fail(f"normalisation must be an object, got {normalisation!r}")
        values = normalisation.get(key, [])
        if values == []:
            return ()
        if (
            not isinstance(values, list)
            or len(values) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise self.fail(
                f"normalisation.{key} must be {channels} numbers (one per channel), got {values!r}"
            )
        return tuple(float(v) for v in values)
