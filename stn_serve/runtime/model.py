"""One exported model version on one ONNX Runtime session; knows nothing about protobuf."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from stn_serve.contract import INPUT_NAME, MODEL_FILE, OUTPUT_NAMES, SPEC_FILE, ModelSpec
from stn_serve.errors import InvalidInputError, NotReadyError
from stn_serve.runtime.options import GRAPH_OPTIMIZATIONS, RuntimeOptions
from stn_serve.runtime.providers import (
    CUDA,
    check_session_provider,
    load_pip_cuda_libraries,
    requested_providers,
)

log = logging.getLogger(__name__)


def _session_options(options: RuntimeOptions):
    import onnxruntime as ort

    levels = dict(
        zip(
            GRAPH_OPTIMIZATIONS,
            (
                ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            ),
        )
    )
    if options.graph_optimization not in levels:
        raise InvalidInputError(
            f"graph optimisation must be one of {list(levels)}, got {options.graph_optimization!r}"
        )
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.graph_optimization_level = levels[options.graph_optimization]
    spinning = "1" if options.spinning else "0"
    session_options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    session_options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return session_options


_cpu_fallbacks_reported: set[str] = set()
_report_lock = threading.Lock()


def _warn_cpu_fallback(cuda_requested: bool, path: str) -> None:
    """`--device auto` ends on the CPU: warned once per process for each cause (naming the first
    version it happened to), not once per model version."""
    reason = (
        "CUDA execution provider unavailable"
        if cuda_requested
        else "no CUDA execution provider or NVIDIA driver"
    )
    with _report_lock:
        if reason in _cpu_fallbacks_reported:
            return
        _cpu_fallbacks_reported.add(reason)
    log.warning(f"{reason}; running on the CPU", extra={"path": path})


def _dims_match(declared, expected: tuple[int, ...]) -> bool:
    """Whether an ONNX shape (ints, or strings/None for symbolic dims) fits `expected`."""
    if len(declared) != len(expected):
        return False
    return all(not isinstance(d, int) or d == e for d, e in zip(declared, expected))


class OnnxModel:
    """A model version from `<repository>/<name>/<version>/` (model.onnx + model.json).

    `load()` reads model.json, creates the session, checks its inputs and outputs against the
    contract and model.json, and warms it up; then `ready` is True and `predict` answers.
    """

    def __init__(self, directory: Path, options: RuntimeOptions | None = None):
        self.directory = Path(directory)
        self.options = options or RuntimeOptions()
        self.spec: ModelSpec | None = None
        self.provider: str | None = None
        self.ready = False
        self._session = None
        self._cuda_device_id = 0  # the GPU a CUDA session runs on, read once at load

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.directory.parent.name

    @property
    def version(self) -> int:
        return self.spec.version if self.spec else int(self.directory.name)

    def load(self) -> OnnxModel:
        import onnxruntime as ort

        spec = ModelSpec.read(self.directory / SPEC_FILE)
        if (spec.name, str(spec.version)) != (self.directory.parent.name, self.directory.name):
            raise InvalidInputError(
                f"{self.directory / SPEC_FILE}: names {spec.name!r} version {spec.version}, "
                f"but it lies in {self.directory.parent.name}/{self.directory.name}"
            )
        self.spec = spec
        providers = requested_providers(self.options.device, ort.get_available_providers())
        if CUDA in providers:
            load_pip_cuda_libraries()
        try:
            session = ort.InferenceSession(
                str(self.directory / MODEL_FILE),
                sess_options=_session_options(self.options),
                providers=providers,
            )
        except Exception as error:
            raise InvalidInputError(
                f"{self.directory / MODEL_FILE}: cannot load: {error}"
            ) from error
        self.provider = check_session_provider(self.options.device, session.get_providers())
        if self.options.device == "auto" and self.provider != CUDA:
            _warn_cpu_fallback(CUDA in providers, str(self.directory))
        self._check_signature(session)
        self._session = session
        cuda_options = session.get_provider_options().get(CUDA, {})
        self._cuda_device_id = int(cuda_options.get("device_id", 0))
        for batch_size in self.options.warmup_batch_sizes:
            self._run(np.zeros((batch_size, *spec.input_shape), np.float32))
        self.ready = True
        log.info(
            "model loaded",
            extra={
                "model": spec.name,
                "version": spec.version,
                "provider": self.provider,
                "path": str(self.directory),
            },
        )
        return self

    def _check_signature(self, session) -> None:
        """The graph's inputs and outputs must be those of the contract, with model.json's sizes."""
        path = self.directory / MODEL_FILE
        inputs = session.get_inputs()
        expected_input = (-1, *self.spec.input_shape)
        if (
            [i.name for i in inputs] != [INPUT_NAME]
            or inputs[0].type != "tensor(float)"
            or not _dims_match(inputs[0].shape, expected_input)
        ):
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise InvalidInputError(
                f"{path}: expected one input {INPUT_NAME!r} float32 [N, "
                f"{', '.join(map(str, self.spec.input_shape))}], got {got}"
            )
        outputs = {o.name: o for o in session.get_outputs()}
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise InvalidInputError(f"{path}: missing outputs {missing}; has {sorted(outputs)}")
        for name in OUTPUT_NAMES:
            expected = (-1, *self.spec.output_shapes[name])
            if outputs[name].type != "tensor(float)" or not _dims_match(
                outputs[name].shape, expected
            ):
                raise InvalidInputError(
                    f"{path}: output {name!r} must be float32 [N, "
                    f"{', '.join(map(str, self.spec.output_shapes[name]))}], "
                    f"got {outputs[name].type} {outputs[name].shape}"
                )

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (float32[N, C, H, W] in [0, 1]) -> {logits, probabilities, crop, theta}, each [N, ...]."""
        if not self.ready:
            raise NotReadyError(f"model {self.name} version {self.version} is not ready")
        expected = self.spec.input_shape
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.float32
            or images.ndim != 4
            or images.shape[1:] != expected
            or images.shape[0] < 1
        ):
            got = (
                f"{getattr(images, 'dtype', type(images).__name__)} "
                f"{list(getattr(images, 'shape', []))}"
            )
            raise InvalidInputError(
                f"images must be float32 [N, {', '.join(map(str, expected))}] with N >= 1, got {got}"
            )
        return self._run(np.ascontiguousarray(images))

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.provider == CUDA:
            return self._run_bound(images)
        values = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return dict(zip(OUTPUT_NAMES, values))

    def _run_bound(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run through IO binding: one host-to-device copy in, outputs allocated on the device."""
        import onnxruntime as ort

        device_id = self._cuda_device_id
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(
            INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(images, "cuda", device_id)
        )
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cuda", device_id)
        self._session.run_with_iobinding(binding)
        return dict(zip(OUTPUT_NAMES, binding.copy_outputs_to_cpu()))

    def unload(self) -> None:
        self.ready = False
        self._session = None

    def __repr__(self) -> str:
        return f"OnnxModel(name={self.name!r}, version={self.version}, provider={self.provider!r}, ready={self.ready})"
