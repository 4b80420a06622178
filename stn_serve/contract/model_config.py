"""Triton's model configuration, `<repository>/<model>/config.pbtxt`, as export writes it.

One file per model, written with its first version and kept afterwards (see `stn_serve.export`):
Triton Inference Server reads it to serve the repository, and stn-serve reads
`max_batch_size`, `dynamic_batching.max_queue_delay_microseconds`, `instance_group` counts and
`version_policy` from it (`stn_serve.runtime.settings`). Where the file sets one of these, it
wins over the server's flag; where it does not (or sets 0), the flag holds. The text is
protobuf's text format of Triton's `ModelConfig` message (protos/inference/model_config.proto),
written here with the
standard library so that the contract needs no protobuf; a test parses it with Triton's own
message class.
"""

from __future__ import annotations

from stn_serve.contract.spec import INPUT_NAME, OUTPUT_NAMES, ModelSpec

#: Triton's platform name for an ONNX model run by its ONNX Runtime backend.
PLATFORM = "onnxruntime_onnx"
#: Triton's name of the one data type our graphs take and return (float32).
DATA_TYPE = "TYPE_FP32"
#: The serving defaults for a model whose config.pbtxt leaves them out (the server's flags
#: start from them): most images merged into one run, how long the first request of a batch
#: waits for others, and how many runs of one model version may go on at once. Export writes
#: only the first: Triton needs max_batch_size to know that dims leave out the batch dimension.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_QUEUE_DELAY_US = 2000
DEFAULT_INSTANCES = 1

_HEADER = """\
# Triton model configuration, written by `stn-serve export` with this model's first version and
# kept since. Both stn-serve and Triton Inference Server read it: edit it to change how this model
# is served. stn-serve follows max_batch_size, dynamic_batching.max_queue_delay_microseconds,
# instance_group counts and version_policy; each one set here wins over the server's flag
# (--max-batch-size, --max-queue-delay-us, --instances), which holds where it is left out.
# The inputs and outputs describe every version.
"""


def _tensor(name: str, dims: tuple[int, ...]) -> str:
    return f'  {{ name: "{name}" data_type: {DATA_TYPE} dims: [ {", ".join(map(str, dims))} ] }}'


def config_text(
    spec: ModelSpec,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int | None = None,
    instances: int | None = None,
) -> str:
    """The config.pbtxt of the model `spec` describes a version of.

    Dims leave out the batch dimension, as Triton's do when `max_batch_size` > 0. An output with
    a zero-sized dimension (the plain CNN's `theta`, [N, 0]) is left out: Triton refuses dims
    below 1, and a client has nothing to read from it. `dynamic_batching` is on; its queue delay
    and the instance count are written only when given (None: the server's flags decide, and
    Triton's defaults). Every version is served (`all`), as stn-serve does for a model without
    this file; `latest` or `specific` pin versions.
    """
    outputs = [
        _tensor(name, spec.output_shapes[name])
        for name in OUTPUT_NAMES
        if all(spec.output_shapes[name])
    ]
    return (
        _HEADER
        + f'name: "{spec.name}"\n'
        + f'platform: "{PLATFORM}"\n'
        + f"max_batch_size: {max_batch_size}\n"
        + f"input [\n{_tensor(INPUT_NAME, spec.input_shape)}\n]\n"
        + "output [\n"
        + ",\n".join(outputs)
        + "\n]\n"
        + (
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
            if max_queue_delay_us is not None
            else "dynamic_batching { }\n"
        )
        + (
            f"instance_group [ {{ count: {instances} kind: KIND_AUTO }} ]\n"
            if instances is not None
            else ""
        )
        + "version_policy { all { } }\n"
    )
