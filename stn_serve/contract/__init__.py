"""The floor both sides stand on: what the training side hands over and the serving side reads.

Free of torch, ONNX, ONNX Runtime and gRPC: the model spec (`model.json`), the repository layout,
the choices both sides name, and the table between domain errors and status codes. Training
(ops, models, data, train, export) and serving (runtime, server, client, batch) both import it;
it imports neither (an import-linter contract in pyproject.toml holds that).
"""

from stn_serve.contract.choices import (
    DEFAULT_TOP_K,
    DEVICES,
    EXECUTION_PROVIDERS,
    NO_TRANSFORM,
    PADDING_MODES,
    TRANSFORMS,
)
from stn_serve.contract.layout import (
    GRADIENTS_FILE,
    MODEL_FILE,
    SPEC_FILE,
    check_name,
    is_version_directory,
    parse_version,
    version_directories,
)
from stn_serve.contract.spec import FORMAT, INPUT_NAME, OUTPUT_NAMES, ModelSpec
from stn_serve.contract.status import STATUS_CODES, error_type_for, status_of

__all__ = [
    "DEFAULT_TOP_K",
    "DEVICES",
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
    "version_directories",
]
