"""The bilinear sampler's fused CPU kernel (`csrc/bilinear_sampler.cpp`): built on first use.

`stn_serve.ops.grid_sample` registers it as the CPU implementation of `stn::grid_sample` and
`stn::grid_sample_backward`; the tensor-op implementation (`stn_serve.ops.bilinear`) stays the
reference and the fallback. The kernel is compiled with torch's own extension tooling (`torch.utils.cpp_extension`,
the C++ compiler `$CXX` or `c++`, and ninja) the first time a CPU tensor is sampled (13 s on 2
busy cores, up to a minute when they are crowded), and cached under `$TORCH_EXTENSIONS_DIR` (by
default `~/.cache/torch_extensions`); later processes load the cached library. Its operators are
`torch.ops.stn_kernel.bilinear_sample` and `torch.ops.stn_kernel.bilinear_sample_backward`.

The reference runs instead where `STN_SAMPLER_KERNEL=0` is set (read at every call), where no
compiler or ninja is found, where the build fails, and for dtypes other than float32 and float64.
Which implementation samples on the CPU is logged once (and again when it changes).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "bilinear_sampler.cpp"

#: Set to 0 (or off, false, no) to sample with the tensor-op reference on the CPU.
ENABLE_ENV = "STN_SAMPLER_KERNEL"

KERNEL_DTYPES = (torch.float32, torch.float64)

# Optimised; no fused multiply-add contraction, so that pixel coordinates round exactly as in
# the reference (which side of a pixel centre a point lands on decides its gradient); floor and
# trunc without floating-point exceptions, so that the compiler can vectorise them.
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
# AVX2 where torch itself runs AVX2 or AVX-512 kernels (AVX-512 measured slower here), tuned for
# this CPU: that is what lets the compiler use the hardware gathers where they pay.
_VECTOR_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-mtune=native"],
    "AVX512": ["-mavx2", "-mfma", "-mtune=native"],
}

_lock = threading.Lock()
_loaded = False
_failure: str | None = None  # why the kernel cannot be built, once that is known
_logged: str | None = None  # the implementation last logged


def enabled() -> bool:
    """False where `STN_SAMPLER_KERNEL` turns the kernel off."""
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def missing_tools() -> str | None:
    """What the build needs and this machine lacks (a C++ compiler, ninja), or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH)"
    if shutil.which("ninja") is None:
        return "ninja is not installed (pip install ninja)"
    return None


def _put_ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the pip package (a dependency of the train extra) may sit in
    a virtual environment that is not activated."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _vector_level() -> str:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT"
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _VECTOR_FLAGS else "DEFAULT"


def build() -> None:
    """Compile (or load from the cache) the kernel and register its operators.

    Raises:
        RuntimeError: the tools are missing or the compiler failed; the message says which.
    """
    global _loaded
    with _lock:
        if _loaded:
            return
        _put_ninja_on_path()
        missing = missing_tools()
        if missing is not None:
            raise RuntimeError(f"cannot build the bilinear sampler kernel: {missing}")
        from torch.utils import cpp_extension

        level = _vector_level()
        log.info(
            "loading the bilinear sampler kernel (compiled on first use, then cached)",
            extra={"source": str(SOURCE), "vector_level": level},
        )
        start = time.perf_counter()
        cpp_extension.load(
            name=f"stn_bilinear_sampler_{level.lower()}",
            sources=[str(SOURCE)],
            extra_cflags=_FLAGS + _VECTOR_FLAGS.get(level, []),
            is_python_module=False,
            verbose=False,
        )
        _loaded = True
        log.info(
            "bilinear sampler kernel ready",
            extra={"seconds": round(time.perf_counter() - start, 2)},
        )


def kernel_for(input: torch.Tensor):
    """`torch.ops.stn_kernel` where the kernel samples `input`, else None (use the reference).

    The first call builds the kernel; a failed build is logged and not tried again.
    """
    global _failure
    if input.device.type != "cpu" or input.dtype not in KERNEL_DTYPES:
        return None
    if not enabled():
        _log_choice("reference", f"{ENABLE_ENV} turns the kernel off", logging.INFO)
        return None
    if _failure is None and not _loaded:
        try:
            build()
        except Exception as error:  # a compiler error is long; the log keeps its end
            _failure = str(error)[-2000:]
    if _failure is not None:
        _log_choice("reference", _failure, logging.WARNING)
        return None
    _log_choice("kernel", None, logging.INFO)
    return torch.ops.stn_kernel


def _log_choice(implementation: str, reason: str | None, level: int) -> None:
    global _logged
    if implementation == _logged:
        return
    _logged = implementation
    names = {"kernel": "the fused C++ kernel", "reference": "the tensor-op reference"}
    log.log(
        level, f"bilinear sampler on the CPU: {names[implementation]}", extra={"reason": reason}
    )
