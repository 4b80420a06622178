"""What an exported model says about itself: `model.json` (read by the serving side) and the
same facts as the ONNX model's `metadata_props` (read by viewers and other tools)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from stn_serve.contract import NO_TRANSFORM, ModelSpec
from stn_serve.models import ModelConfig

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
) -> ModelSpec:
    """What `model.json` says of the exported model (docs/contracts.md).

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
    return ModelSpec(
        name=name,
        version=version,
        labels=tuple(labels),
        input_shape=(channels, *config.input_size),
        output_shapes={
            "logits": (len(labels),),
            "probabilities": (len(labels),),
            "crop": (channels, *config.classifier_size),
            "theta": (num_params,),
        },
        transform=config.transform if config.arch == "stcnn" else NO_TRANSFORM,
        padding_mode=config.padding_mode,
        align_corners=config.align_corners,
        mean=tuple(config.mean),
        std=tuple(config.std),
        opset=opset,
        metrics=dict(metrics),
        parity=parity,
        versions=package_versions(),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def set_metadata(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Copy `spec`'s `model.json` document into `model.metadata_props`, one entry per key;
    values other than strings are written as JSON."""
    del model.metadata_props[:]
    for key, value in spec.to_json().items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.add(key=key, value=text)
    kind = (
        "plain CNN classifier"
        if spec.transform == NO_TRANSFORM
        else f"{spec.transform} spatial transformer classifier"
    )
    model.doc_string = (
        f"stn-serve model {spec.name} version {spec.version}: {kind}; "
        f"input image float32 [N, {', '.join(map(str, spec.input_shape))}] in [0, 1]."
    )
