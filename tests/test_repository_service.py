"""The Open Inference Protocol's repository extension, ModelConfig and ModelStatistics, called
with tritonclient against a small gRPC server that registers `RepositoryService`'s handlers
(the full server registers the same handlers in its InferenceServicer)."""

from __future__ import annotations

import contextlib
import shutil
from concurrent import futures

import grpc
import pytest

from stn_serve._proto.inference import grpc_service_pb2_grpc
from stn_serve.contract import CONFIG_FILE, status_of
from stn_serve.runtime import (
    Batching,
    ModelControl,
    ModelControlOptions,
    ModelRepository,
    RuntimeOptions,
)
from stn_serve.server.repository_service import RepositoryService
from stn_serve.server.statistics import InferenceStatistics

FLAGS = Batching(max_batch_size=16, max_queue_delay_us=500, instances=2)


class RepositoryServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: RepositoryService):
        self.service = service

    def _answer(self, handler, request, context):
        try:
            return handler(request)
        except Exception as error:  # noqa: BLE001 - as the real servicer does
            code, message = status_of(error)
            context.abort(grpc.StatusCode[code], message)

    def RepositoryIndex(self, request, context):
        return self._answer(self.service.repository_index, request, context)

    def RepositoryModelLoad(self, request, context):
        return self._answer(self.service.load, request, context)

    def RepositoryModelUnload(self, request, context):
        return self._answer(self.service.unload, request, context)

    def ModelConfig(self, request, context):
        return self._answer(self.service.model_config, request, context)

    def ModelStatistics(self, request, context):
        return self._answer(self.service.model_statistics, request, context)


@contextlib.contextmanager
def serving(root, mode="none", **control):
    """(tritonclient, RepositoryService) for a repository at `root` under model control `mode`."""
    import tritonclient.grpc as triton

    repository = ModelRepository(root, RuntimeOptions(device="cpu"))
    model_control = ModelControl(repository, ModelControlOptions(mode=mode, **control))
    model_control.start()
    service = RepositoryService(model_control, InferenceStatistics(), FLAGS)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        RepositoryServicer(service), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield triton.InferenceServerClient(f"127.0.0.1:{port}"), service
    finally:
        server.stop(None)
        model_control.stop(5)


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
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
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


def test_statistics_report_what_was_recorded(repository_copy):
    from tritonclient.utils import InferenceServerException

    with serving(repository_copy) as (client, service):
        empty = client.get_inference_statistics(as_json=True)["model_stats"]
        assert [(s["name"], s["version"]) for s in empty] == [("digits", "1"), ("digits", "2")]
        recorder = service.statistics
        for images in (3, 5):
            recorder.record_request(
                "digits",
                2,
                ok=True,
                images=images,
                duration_ns=1000,
                queue_ns=100,
                compute_infer_ns=700,
            )
        recorder.record_request("digits", 2, ok=False, images=1, duration_ns=50)
        recorder.record_execution("digits", 2, batch_size=8, compute_infer_ns=700)
        (stats,) = client.get_inference_statistics("digits", "2").model_stats
        assert (stats.inference_count, stats.execution_count) == (8, 1)
        assert (stats.inference_stats.success.count, stats.inference_stats.success.ns) == (2, 2000)
        assert (stats.inference_stats.fail.count, stats.inference_stats.fail.ns) == (1, 50)
        assert (
            stats.inference_stats.queue.ns == 200 and stats.inference_stats.compute_infer.ns == 1400
        )
        assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(8, 1)]
        assert stats.last_inference > 0
        (one,) = client.get_inference_statistics("digits", "1").model_stats
        assert one.inference_count == 0
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.get_inference_statistics("nope")
