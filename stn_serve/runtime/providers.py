"""Choosing ONNX Runtime execution providers for `--device auto|cuda|cpu`.

ONNX Runtime falls back to the CPU without raising when the CUDA provider cannot load (no GPU, no
CUDA libraries), so the provider a session actually got is read back from the session.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import sys

from stn_serve.contract import DEVICES, EXECUTION_PROVIDERS
from stn_serve.errors import DeviceUnavailableError, InvalidInputError

CUDA = EXECUTION_PROVIDERS["cuda"]
CPU = EXECUTION_PROVIDERS["cpu"]


@functools.cache
def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver's CUDA library loads. Without it the CUDA provider cannot run,
    and asking ONNX Runtime for it anyway only prints a loud load failure before falling back."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def requested_providers(
    device: str, available: list[str], cuda_driver: bool | None = None
) -> list[str]:
    """The providers to ask ONNX Runtime for, in priority order.

    `cuda_driver` says whether the NVIDIA driver is installed (None: probe for it); `auto` asks
    for CUDA only where it is, `cuda` always does so that the failure names what is missing.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise DeviceUnavailableError(
                f"--device cuda: this onnxruntime build has no {CUDA} (available: {available}); "
                "install onnxruntime-gpu or use --device auto or cpu"
            )
        return [CUDA]
    if CUDA not in available:
        return [CPU]
    if cuda_driver is None:
        cuda_driver = cuda_driver_present()
    return [CUDA, CPU] if cuda_driver else [CPU]


@functools.cache
def load_pip_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages when they are installed (as with
    `pip install onnxruntime-gpu[cuda,cudnn]`), so the CUDA provider finds them without
    LD_LIBRARY_PATH; without those packages the system's libraries are used as they are."""
    if importlib.util.find_spec("nvidia") is None:
        return
    import onnxruntime as ort

    ort.preload_dlls(directory="")


def check_session_provider(device: str, session_providers: list[str]) -> str:
    """The provider a session runs on; raises when `--device cuda` got anything but CUDA."""
    got = session_providers[0] if session_providers else CPU
    if device == "cuda" and got != CUDA:
        raise DeviceUnavailableError(
            f"--device cuda: ONNX Runtime could not use the {CUDA} (the session got "
            f"{session_providers}); check that a GPU is visible and that the CUDA and cuDNN "
            "libraries this onnxruntime build needs are installed, or use --device auto or cpu"
        )
    return got
