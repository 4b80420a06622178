"""The Open Inference Protocol's repository extension, ModelConfig and ModelStatistics, called
with tritonclient against the server (`create_server` on 127.0.0.1 port 0) under each model
control mode."""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest
from conftest import DIGITS_SHAPE, running_server

from stn_serve.contract import CONFIG_FILE
from stn_serve.runtime import ModelControlOptions, RuntimeOptions

# The server's batching flags, which a model's config.pbtxt overrides where it sets a value.
FLAGS = {"max_batch_size": 16, "max_queue_delay_us": 500, "instances": 2}


@contextlib.contextmanager
def serving(root, mode="none", **control):
    """(tritonclient, server) for a repository at `root` under model control `mode`."""
    import tritonclient.grpc as triton

    with running_server(
        root,
        runtime_options=RuntimeOptions(device="cpu"),
        model_control=ModelControlOptions(mode=mode, **control),
        **FLAGS,
    ) as (server, port):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            yield client, server
        finally:
            client.close()


@pytest.fixture
def repository_copy(model_repository, tmp_path):
    shutil.copytree(model_repository, tmp_path / "export")
    return tmp_path / "export"


def index(client, ready=False) -> list[tuple[str, str, str, str]]:
    response = client.get_model_repository_index(as_json=True)
    entries = [
        (m["name"], m.get("version", ""), m.get("state", ""), m.get("reason", ""))
        for m in response.get("models", [])
    ]
    return [e for e in entries if e[2] == "READY"] if ready else entries


def test_index_lists_each_version_with_its_state(repository_copy):
    from conftest import write_model

    broken = write_model(repository_copy, "broken", 1)
    (broken / "model.onnx").write_bytes(b"x")
    with serving(repository_copy) as (client, _):
        entries = index(client)
        assert [entry[:3] for entry in entries] == [
            ("broken", "1", "UNAVAILABLE"),
            ("digits", "1", "READY"),
            ("digits", "2", "READY"),
        ]
        assert "cannot load" in entries[0][3] and not entries[1][3]
        ready = client.get_model_repository_index()
        assert [(m.name, m.version) for m in ready.models if m.state == "READY"] == [
            ("digits", "1"),
            ("digits", "2"),
        ]


def test_explicit_load_and_unload_through_tritonclient(repository_copy):
    from tritonclient.utils import InferenceServerException

    with serving(repository_copy, mode="explicit") as (client, service):
        assert index(client) == [("digits", "", "", "")]  # in the repository, never loaded
        client.load_model("digits")
        assert index(client) == [("digits", "1", "READY", ""), ("digits", "2", "READY", "")]
        client.unload_model("digits", unload_dependents=True)
        assert index(client) == [
            ("digits", "1", "UNAVAILABLE", "unloaded"),
            ("digits", "2", "UNAVAILABLE", "unloaded"),
        ]
        with pytest.raises(InferenceServerException, match="NOT_FOUND.*no model 'absent'"):
            client.load_model("absent")
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*load parameters"):
            client.load_model("digits", config='{"max_batch_size": 4}')
        assert service.repository.names() == []
        with pytest.raises(InferenceServerException, match="NOT_FOUND.*'digits' has no version"):
            infer(client, "digits")


def test_load_and_unload_are_refused_unless_explicit(repository_copy):
    from tritonclient.utils import InferenceServerException

    with serving(repository_copy) as (client, _):
        with pytest.raises(InferenceServerException, match="FAILED_PRECONDITION.*mode is 'none'"):
            client.unload_model("digits")
        assert index(client, ready=True)  # still serving


def test_model_config_is_the_config_pbtxt_completed(repository_copy):
    with serving(repository_copy) as (client, _):
        config = client.get_model_config("digits").config
        assert (config.name, config.platform, config.max_batch_size) == (
            "digits",
            "onnxruntime_onnx",
            32,
        )
        # The file sets the batch size; the delay and the instances are the server's flags.
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert [g.count for g in config.instance_group] == [2]
        assert [t.name for t in config.output] == ["logits", "probabilities", "crop", "theta"]
        assert list(config.input[0].dims) == [1, 28, 28]
        assert config.version_policy.WhichOneof("policy_choice") == "all"


def test_model_config_without_a_file_comes_from_model_json_and_the_flags(repository_copy):
    (repository_copy / "digits" / CONFIG_FILE).unlink()
    with serving(repository_copy) as (client, _):
        config = client.get_model_config("digits", "1").config
        assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (
            16,
            500,
        )
        assert [g.count for g in config.instance_group] == [2]
        assert list(config.output[3].dims) == [6]


def test_model_config_shows_a_partial_files_effective_values(repository_copy):
    (repository_copy / "digits" / CONFIG_FILE).write_text("max_batch_size: 4\n")
    with serving(repository_copy) as (client, _):
        config = client.get_model_config("digits").config
        assert config.max_batch_size == 4
        assert config.dynamic_batching.max_queue_delay_microseconds == 500  # the flag
        assert config.version_policy.latest.num_versions == 1  # Triton's default policy
        assert [t.name for t in config.input] == ["image"]


def test_model_config_of_an_unknown_model_is_not_found(repository_copy):
    from tritonclient.utils import InferenceServerException

    with serving(repository_copy) as (client, _):
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.get_model_config("nope")
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*positive integer"):
            client.get_model_config("digits", "\u00b2")


def infer(client, name: str, version: str = "", images: int = 1, output: str = "theta"):
    import tritonclient.grpc as triton

    image = triton.InferInput("image", [images, *DIGITS_SHAPE], "FP32")
    image.set_data_from_numpy(np.full((images, *DIGITS_SHAPE), 0.5, np.float32))
    wanted = [triton.InferRequestedOutput(output)]
    return client.infer(name, [image], model_version=version, outputs=wanted)


def test_statistics_count_what_the_server_did(repository_copy):
    from tritonclient.utils import InferenceServerException

    with serving(repository_copy) as (client, _):
        empty = client.get_inference_statistics(as_json=True)["model_stats"]
        assert [(s["name"], s["version"]) for s in empty] == [("digits", "1"), ("digits", "2")]
        for images in (3, 5):
            infer(client, "digits", "2", images)
        with pytest.raises(InferenceServerException, match="unknown outputs"):
            infer(client, "digits", "2", output="boxes")
        (stats,) = client.get_inference_statistics("digits", "2").model_stats
        requests = stats.inference_stats
        assert (stats.inference_count, stats.execution_count) == (8, 2)
        assert (requests.success.count, requests.fail.count) == (2, 1)
        assert requests.success.ns > 0 and requests.fail.ns > 0
        # Each request that ran counts its wait in the queue and the run it was part of.
        assert (requests.queue.count, requests.compute_infer.count) == (2, 2)
        assert requests.compute_infer.ns > 0
        assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [
            (3, 1),
            (5, 1),
        ]
        assert stats.last_inference > 0
        (one,) = client.get_inference_statistics("digits", "1").model_stats
        assert one.inference_count == 0 and one.inference_stats.success.count == 0
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.get_inference_statistics("nope")
