"""stn_serve.runtime: loading a model repository and running models on ONNX Runtime."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import DIGITS_SHAPE, build_affine_stn_onnx, cuda_usable, model_json, write_model

from stn_serve.errors import DeviceUnavailableError, InvalidInputError, NotFoundError, NotReadyError
from stn_serve.runtime import ModelRepository, OnnxModel, RuntimeOptions
from stn_serve.runtime.providers import CPU, CUDA, check_session_provider, requested_providers

CPU_ONLY = RuntimeOptions(device="cpu")


@pytest.fixture(scope="module")
def repository(model_repository):
    return ModelRepository(model_repository, CPU_ONLY).load()


def test_loads_every_version_newest_by_default(repository):
    assert repository.names() == ["digits"]
    assert repository.versions("digits") == [1, 2]
    assert repository.get("digits").version == 2
    assert repository.get("digits", 1).version == 1
    assert repository.get("").name == "digits"  # the only model
    assert repository.ready and not repository.failures


def test_unknown_model_and_version_name_what_exists(repository):
    with pytest.raises(NotFoundError, match=r"unknown model 'nope'; loaded models: \['digits'\]"):
        repository.get("nope")
    with pytest.raises(NotFoundError, match=r"no version 7; loaded versions: \[1, 2\]"):
        repository.get("digits", 7)


def test_predict_shapes_and_values(repository, digits_images):
    model = repository.get("digits")
    outputs = model.predict(digits_images)
    assert outputs["logits"].shape == (4, 10)
    assert outputs["probabilities"].shape == (4, 10)
    assert outputs["crop"].shape == (4, *DIGITS_SHAPE)
    assert outputs["theta"].shape == (4, 6)
    softmax = np.exp(outputs["logits"]) / np.exp(outputs["logits"]).sum(1, keepdims=True)
    np.testing.assert_allclose(outputs["probabilities"], softmax, rtol=1e-5, atol=1e-6)


def test_batched_run_equals_runs_one_by_one(repository, digits_images):
    model = repository.get("digits")
    batched = model.predict(digits_images)
    for i in range(len(digits_images)):
        single = model.predict(digits_images[i : i + 1])
        for name, value in single.items():
            np.testing.assert_allclose(batched[name][i : i + 1], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 1, 28, 28), np.float64), "float32"),
        (np.zeros((2, 3, 28, 28), np.float32), r"got float32 \[2, 3, 28, 28\]"),
        (np.zeros((1, 28, 28), np.float32), r"float32 \[N, 1, 28, 28\]"),
        (np.zeros((0, 1, 28, 28), np.float32), "N >= 1"),
    ],
)
def test_predict_rejects_wrong_input(repository, images, message):
    with pytest.raises(InvalidInputError, match=message):
        repository.get("digits").predict(images)


def test_model_not_loaded_is_not_ready(model_repository):
    model = OnnxModel(model_repository / "digits" / "1", CPU_ONLY)
    assert not model.ready
    with pytest.raises(NotReadyError):
        model.predict(np.zeros((1, *DIGITS_SHAPE), np.float32))


def _break_json(data):
    data["labels"] = data["labels"][:3]
    return data


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "model.onnx").write_bytes(b"not an onnx file"), "cannot load"),
        (lambda d: (d / "model.onnx").unlink(), "cannot load"),
        (lambda d: (d / "model.json").write_text("{not json"), "cannot read model.json"),
        (lambda d: (d / "model.json").unlink(), "cannot read model.json"),
        (
            lambda d: (d / "model.json").write_text(
                json.dumps(_break_json(model_json("broken", 1)))
            ),
            r"outputs.logits must be \[3\]",
        ),
        (
            lambda d: (d / "model.json").write_text(
                json.dumps({**model_json("broken", 1), "format": "x"})
            ),
            "format must be 'stn-serve-model/1'",
        ),
        (
            lambda d: (d / "model.json").write_text(json.dumps(model_json("other", 1))),
            "names 'other' version 1, but it lies in broken/1",
        ),
        (
            lambda d: build_affine_stn_onnx(d / "model.onnx", input_shape=(3, 28, 28)),
            r"expected one input 'image' float32 \[N, 1, 28, 28\]",
        ),
        (
            lambda d: build_affine_stn_onnx(d / "model.onnx", num_classes=5),
            r"output 'logits' must be float32 \[N, 10\]",
        ),
    ],
    ids=[
        "corrupt-onnx",
        "no-onnx",
        "corrupt-json",
        "no-json",
        "labels-vs-outputs",
        "format",
        "name-vs-folder",
        "input-shape",
        "output-shape",
    ],
)
def test_model_that_fails_to_load_is_left_out(model_repository, tmp_path, damage, reason, caplog):
    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    broken = write_model(tmp_path, "broken", 1)
    damage(broken)
    repository = ModelRepository(tmp_path, CPU_ONLY).load()
    assert repository.names() == ["digits"]
    assert list(repository.failures) == [broken]
    assert re.search(reason, repository.failures[broken]), repository.failures[broken]
    assert any(r.message == "model left out" and r.path == str(broken) for r in caplog.records)


def test_missing_repository_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="is not a folder"):
        ModelRepository(tmp_path / "absent").load()


@pytest.mark.parametrize("spinning", [False, True])
def test_session_options_are_applied(model_repository, spinning):
    options = RuntimeOptions(
        device="cpu",
        intra_op_threads=1,
        inter_op_threads=1,
        graph_optimization="basic",
        spinning=spinning,
    )
    model = OnnxModel(model_repository / "digits" / "1", options).load()
    assert model.provider == CPU
    session_options = model._session.get_session_options()
    assert session_options.intra_op_num_threads == 1
    assert session_options.inter_op_num_threads == 1
    assert session_options.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    expected = "1" if spinning else "0"
    assert session_options.get_session_config_entry("session.intra_op.allow_spinning") == expected


def test_unknown_graph_optimisation_is_refused(model_repository):
    with pytest.raises(InvalidInputError, match="graph optimisation must be one of"):
        OnnxModel(
            model_repository / "digits" / "1", RuntimeOptions(graph_optimization="max")
        ).load()


def test_requested_providers():
    assert requested_providers("cpu", [CUDA, CPU]) == [CPU]
    assert requested_providers("auto", [CUDA, CPU], cuda_driver=True) == [CUDA, CPU]
    # Without the NVIDIA driver, auto does not ask for CUDA (ONNX Runtime would fail loudly).
    assert requested_providers("auto", [CUDA, CPU], cuda_driver=False) == [CPU]
    assert requested_providers("cuda", [CUDA, CPU], cuda_driver=False) == [CUDA]
    assert requested_providers("auto", [CPU]) == [CPU]
    assert requested_providers("cuda", [CUDA, CPU]) == [CUDA]
    with pytest.raises(
        DeviceUnavailableError, match="this onnxruntime build has no CUDAExecutionProvider"
    ):
        requested_providers("cuda", [CPU])


def test_session_that_fell_back_to_cpu_fails_device_cuda():
    assert check_session_provider("auto", [CPU]) == CPU
    with pytest.raises(DeviceUnavailableError, match="could not use the CUDAExecutionProvider"):
        check_session_provider("cuda", [CPU])


def test_auto_records_the_provider_the_session_got(model_repository):
    model = OnnxModel(model_repository / "digits" / "1", RuntimeOptions(device="auto")).load()
    assert model.provider == model._session.get_providers()[0]


def test_device_cuda_without_cuda_fails_loading_the_repository(model_repository):
    if cuda_usable():
        pytest.skip("CUDA works here; the failure path needs a machine without it")
    with pytest.raises(DeviceUnavailableError, match="--device cuda"):
        ModelRepository(model_repository, RuntimeOptions(device="cuda")).load()


@pytest.mark.gpu
def test_cuda_with_io_binding_matches_cpu(model_repository, digits_images, monkeypatch):
    if not cuda_usable():
        pytest.skip("the CUDA execution provider cannot be used here")
    gpu = OnnxModel(model_repository / "digits" / "2", RuntimeOptions(device="cuda")).load()
    cpu = OnnxModel(model_repository / "digits" / "2", CPU_ONLY).load()
    assert gpu.provider == CUDA
    bound_runs = []
    original = gpu._session.run_with_iobinding
    monkeypatch.setattr(
        gpu._session, "run_with_iobinding", lambda b: bound_runs.append(b) or original(b)
    )
    got, expected = gpu.predict(digits_images), cpu.predict(digits_images)
    assert len(bound_runs) == 1
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_auto_without_cuda_warns_once_per_process(model_repository, caplog, monkeypatch):
    import onnxruntime as ort

    from stn_serve.runtime import model as model_module

    if CUDA not in ort.get_available_providers() or cuda_usable():
        pytest.skip("needs an onnxruntime build with the CUDA provider on a machine without CUDA")
    monkeypatch.setattr(model_module, "_cpu_fallbacks_reported", set())
    repository = ModelRepository(model_repository, RuntimeOptions(device="auto")).load()
    assert [m.provider for m in repository.models()] == [CPU, CPU]  # two versions
    warnings = [r for r in caplog.records if "running on the CPU" in r.message]
    assert len(warnings) == 1, [r.path for r in warnings]
