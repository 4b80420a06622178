"""What an exported model says about itself: `model.json` (read by the serving side) and the
same facts as the ONNX model's `metadata_props` (read by viewers and other tools)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from stn_serve.models import ModelConfig
from stn_serve.runtime.spec import FORMAT, INPUT_NAME

if TYPE_CHECKING:
    import onnx


def package_versions() -> dict[str, str]:
    """Versions of the packages that wrote and checked the model: a checkpoint's, plus the
    exporter's."""
    import onnx
    import onnxruntime
    import onnxscript

    from stn_serve.train.checkpoint import package_versions as training_versions

    return {**training_versions(), "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


def describe(
    config: ModelConfig,
    labels: list[str],
    name: str,
    version: int,
    opset: int,
    num_params: int,
    metrics: dict,
    parity: dict,
) -> dict:
    """The `model.json` document of docs/contracts.md.

    Args:
        config: the model's architecture and input contract.
        labels: class names, one per logit.
        name, version: where the model sits in the repository.
        opset: the standard ONNX opset of the graph.
        num_params: P, the width of the theta output (0 for the plain CNN).
        metrics: training figures (e.g. test_accuracy).
        parity: the torch vs ONNX Runtime figures measured at export.
    """
    channels = config.in_channels
    crop_height, crop_width = config.classifier_size
    return {
        "name": name,
        "version": version,
        "format": FORMAT,
        "labels": list(labels),
        "input": {"name": INPUT_NAME, "shape": [channels, *config.input_size], "dtype": "float32",
                  "range": [0.0, 1.0]},
        "outputs": {"logits": [len(labels)], "probabilities": [len(labels)],
                    "crop": [channels, crop_height, crop_width], "theta": [num_params]},
        "transform": config.transform if config.arch == "stcnn" else "none",
        "crop_size": [crop_height, crop_width],
        "padding_mode": config.padding_mode,
        "align_corners": config.align_corners,
        "normalisation": {"mean": list(config.mean), "std": list(config.std)},
        "opset": opset,
        "metrics": dict(metrics),
        "parity": parity,
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def set_metadata(model: onnx.ModelProto, description: dict) -> None:
    """Copy `description` (a `describe` result) into `model.metadata_props`, one entry per key;
    values other than strings are written as JSON."""
    del model.metadata_props[:]
    for key, value in description.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.add(key=key, value=text)
    transform = description["transform"]
    kind = "plain CNN classifier" if transform == "none" else f"{transform} spatial transformer classifier"
    model.doc_string = (
        f"stn-serve model {description['name']} version {description['version']}: {kind}; "
        f"input image float32 [N, {', '.join(map(str, description['input']['shape']))}] in [0, 1]."
    )
