"""Structured logging: one JSON object per line on stderr, so log collectors can parse it."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

# Libraries that speak too much at INFO: the ONNX exporter's graph passes report every rewrite and
# folded constant, and torch's op registry warns on every export that torchvision's ops (which
# this project does not use) are skipped.
QUIETER_LOGGERS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}


def configure_logging(level: str = "INFO") -> None:
    """Send every log record (the root logger's) to stderr as JSON (timestamp, level, logger,
    message, extras), with the libraries in QUIETER_LOGGERS held to their level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quieter in QUIETER_LOGGERS.items():
        logging.getLogger(name).setLevel(quieter)
