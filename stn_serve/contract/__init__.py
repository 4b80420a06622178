"""The floor both sides stand on: what the training side hands over and the serving side reads.

Free of torch, ONNX, ONNX Runtime and gRPC: the model spec (`model.json`), the repository layout,
Triton's `config.pbtxt` as export writes it (`contract.model_config`), the choices both sides
name, the table between domain errors and status codes, and bearer-token files
(`contract.auth`). Training (ops, models, data, train, export) and serving (runtime, server,
client, batch) both import it; it imports neither (an import-linter contract in pyproject.toml
holds that).
"""

from stn_serve.contract.choices import (
    DATA_SOURCES,
    DEFAULT_TOP_K,
    DEVICES,
    DISTORTIONS,
    EXECUTION_PROVIDERS,
    NO_TRANSFORM,
    PADDING_MODES,
    TRANSFORMS,
)
from stn_serve.contract.layout import (
    CONFIG_FILE,
    GRADIENTS_FILE,
    MODEL_FILE,
    SPEC_FILE,
    check_name,
    is_version_directory,
    parse_version,
)
from stn_serve.contract.spec import FORMAT, INPUT_NAME, OUTPUT_NAMES, ModelSpec
from stn_serve.contract.status import STATUS_CODES, error_type_for, status_of

__all__ = [
    "CONFIG_FILE",
    "DATA_SOURCES",
    "DEFAULT_TOP_K",
    "DEVICES",
    "DISTORTIONS",
    "EXECUTION_PROVIDERS",
    "FORMAT",
    "GRADIENTS_FILE",
    "INPUT_NAME",
    "MODEL_FILE",
    "NO_TRANSFORM",
    "OUTPUT_NAMES",
    "PADDING_MODES",
    "SPEC_FILE",
    "STATUS_CODES",
    "TRANSFORMS",
    "ModelSpec",
    "check_name",
    "error_type_for",
    "is_version_directory",
    "parse_version",
    "status_of",
]
