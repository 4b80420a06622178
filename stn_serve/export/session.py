"""ONNX Runtime sessions for verification: the CPU provider, chosen explicitly."""

from __future__ import annotations

import logging

import numpy as np

from stn_serve.contract import EXECUTION_PROVIDERS

log = logging.getLogger(__name__)


def cpu_session(model: bytes):
    """An `onnxruntime.InferenceSession` on the CPU provider for a serialised ONNX model.

    ONNX Runtime can quietly fall back to another provider, so the one the session got is
    read back and logged.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=[EXECUTION_PROVIDERS["cpu"]])
    log.info("onnxruntime session", extra={"provider": session.get_providers()[0]})
    return session


def run(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every output of `session` on `inputs`; returns {output name: array}."""
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))
