"""Triton's model configuration beside the versions: `<repository>/<name>/config.pbtxt`.

Written with the model's first exported version and never overwritten afterwards, so that an
operator's edits (version policy, batching, instances) survive later exports.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stn_serve.contract import CONFIG_FILE, ModelSpec
from stn_serve.contract.model_config import config_text

log = logging.getLogger(__name__)


def write_model_config(repository: Path, spec: ModelSpec) -> Path | None:
    """Create `<repository>/<spec.name>/config.pbtxt` from `spec` unless the file exists.

    Returns:
        The path written, or None when a config.pbtxt was already there (it is kept as it is).
    """
    path = Path(repository) / spec.name / CONFIG_FILE
    try:
        # "x": create only; an existing file, or one another export creates meanwhile, is kept.
        with path.open("x") as file:
            file.write(config_text(spec))
    except FileExistsError:
        log.info("model configuration kept", extra={"path": str(path)})
        return None
    return path
