"""`stn-serve serve` as a process: start-up, a repository with a broken model, SIGTERM, SIGHUP,
--device cuda, and flag values it refuses."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
from conftest import DIGITS_SHAPE, cuda_usable, running_server, write_model
from server_process import NO_TORCH_CLI, WAIT_S, ServerProcess

from stn_serve._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.cli import build_parser
from stn_serve.commands.formatting import UNSET_NOTE


@pytest.fixture
def repository_with_broken_model(model_repository, tmp_path):
    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    broken = write_model(tmp_path, "broken", 1)
    (broken / "model.onnx").write_bytes(b"\x08\x07 corrupt")
    return tmp_path


def good_request() -> stn_pb2.PredictRequest:
    image = np.full(DIGITS_SHAPE, 0.25, np.float32)
    return stn_pb2.PredictRequest(
        images=[
            stn_pb2.Image(
                tensor=stn_pb2.Tensor(
                    shape=DIGITS_SHAPE, dtype=stn_pb2.DATA_TYPE_FLOAT32, data=image.tobytes()
                )
            )
        ],
        model="digits",
    )


def predict(port: int) -> stn_pb2.PredictResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return stn_pb2_grpc.StnServiceStub(channel).Predict(good_request(), timeout=WAIT_S)


def test_broken_model_is_left_out_and_the_others_serve(repository_with_broken_model):
    with running_server(repository_with_broken_model) as (server, port):
        assert list(server.repository.failures) == [repository_with_broken_model / "broken" / "1"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stn_pb2_grpc.StnServiceStub(channel)
            listed = stub.ListModels(stn_pb2.ListModelsRequest(), timeout=30).models
            assert [(m.name, m.ready) for m in listed] == [("broken", False), ("digits", True)]
            (state,) = listed[0].version_states
            assert (
                state.state == stn_pb2.VERSION_STATE_UNAVAILABLE and "cannot load" in state.reason
            )
            assert len(stub.Predict(good_request(), timeout=30).predictions) == 1
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            ready = inference.ModelReady(
                grpc_service_pb2.ModelReadyRequest(name="broken"), timeout=30
            )
            assert not ready.ready
            assert inference.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=30).ready


def test_serve_without_torch_logs_left_out_models_and_exits_0_on_sigterm(
    repository_with_broken_model,
):
    with ServerProcess(
        "--repository", str(repository_with_broken_model), "--device", "cpu",
        "--metrics-port", "0", "--grace-s", "5",
    ) as server:  # fmt: skip
        serving = server.serving()
        left_out = [r for r in server.records if r["message"] == "model left out"]
        assert [r["path"] for r in left_out] == [str(repository_with_broken_model / "broken" / "1")]
        assert "cannot load" in left_out[0]["reason"]
        response = predict(serving["port"])
        assert (response.model, response.version) == ("digits", 2)
        server.send(signal.SIGTERM)
        assert server.wait() == 0
        server.wait_for("stopped")


def test_sighup_is_logged_and_the_server_keeps_serving(model_repository):
    with ServerProcess(
        "--repository", str(model_repository), "--device", "cpu", "--metrics-port", "-1"
    ) as server:
        port = server.serving()["port"]
        for count in (1, 2):
            server.send(signal.SIGHUP)
            server.wait_for(
                "SIGHUP ignored: only model control mode 'poll' rescans the repository", count
            )
            assert len(predict(port).predictions) == 1
        server.send(signal.SIGTERM)
        assert server.wait() == 0


def test_device_cuda_without_cuda_fails_at_start_up(model_repository):
    if cuda_usable():
        pytest.skip("CUDA works here; the failure path needs a machine without it")
    with ServerProcess(
        "--repository", str(model_repository), "--device", "cuda", "--metrics-port", "-1"
    ) as server:
        assert server.wait() == 2
        assert "error: --device cuda: ONNX Runtime could not use the CUDAExecutionProvider" in (
            "".join(server.text)
        )


def test_empty_repository_fails_at_start_up(tmp_path):
    with ServerProcess(
        "--repository", str(tmp_path), "--device", "cpu", "--metrics-port", "-1"
    ) as server:
        assert server.wait() == 2
        assert f"error: no model in {tmp_path} could be loaded: it is empty" in "".join(server.text)


def test_help_documents_every_flag_with_its_default():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} >= {
        "repository", "host", "port", "metrics_port", "processes", "device", "intra_op_threads",
        "inter_op_threads", "graph_optimization", "instances", "max_batch_size",
        "max_queue_delay_us", "max_in_flight", "max_in_flight_per_model",
        "max_images_per_request", "max_message_mb", "decode_threads", "max_decode_mb",
        "decode_budget_mb", "max_streams_per_connection", "stream_idle_timeout_s",
        "keepalive_s", "max_connection_idle_s", "max_connection_age_s", "drain_delay_s",
        "grace_s", "model_control_mode", "repository_poll_s", "load_model", "tls_cert",
        "tls_key", "tls_client_ca", "auth_token_file", "no_reflection", "metrics_host",
        "health_port", "health_host",
    }  # fmt: skip
    help_text = serve.format_help()
    text = " ".join(help_text.split())
    for action in flags:
        assert action.help, action.dest
        if action.default is None:  # shown as what leaving the flag out does
            note = UNSET_NOTE.search(action.help).group(1)
            assert f"(default: {' '.join(note.split())})" in text, action.dest
        else:
            assert f"(default: {action.default})" in text, action.dest


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--port", "error: cannot bind 127.0.0.1:{port}"),
        ("--metrics-port", "error: cannot serve metrics on 127.0.0.1:{port}"),
    ],
)
def test_port_in_use_fails_with_a_clear_message(model_repository, flag, message):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # ServerProcess passes --port 0 first; the later flag wins
        with ServerProcess(
            "--repository", str(model_repository), "--device", "cpu", "--metrics-port", "0",
            flag, str(port),
        ) as server:  # fmt: skip
            assert server.wait() == 2
    assert message.format(port=port) in "".join(server.text)


BAD_FLAGS = {
    "negative port": (["--port", "-1"], "argument --port: expected an integer >= 0 and <= 65,535"),
    "port too large": (["--port", "70000"], "argument --port: expected an integer >= 0"),
    "metrics port": (
        ["--metrics-port", "-2"],
        "argument --metrics-port: expected an integer >= -1",
    ),
    "nan message size": (
        ["--max-message-mb", "nan"],
        "argument --max-message-mb: expected a number > 0",
    ),
    "huge message size": (["--max-message-mb", "4096"], "<= 2,047, got '4096'"),
    "zero message size": (
        ["--max-message-mb", "0"],
        "argument --max-message-mb: expected a number > 0",
    ),
    "negative threads": (
        ["--intra-op-threads", "-1"],
        "argument --intra-op-threads: expected an integer >= 0",
    ),
    "text threads": (
        ["--inter-op-threads", "two"],
        "argument --inter-op-threads: expected an integer",
    ),
    "zero batch": (
        ["--max-batch-size", "0"],
        "argument --max-batch-size: expected an integer >= 1",
    ),
    "infinite grace": (["--grace-s", "inf"], "argument --grace-s: expected a number >= 0"),
    "negative delay": (
        ["--drain-delay-s", "-1"],
        "argument --drain-delay-s: expected a number >= 0",
    ),
    "zero processes": (["--processes", "0"], "argument --processes: expected an integer >= 1"),
    "per model over all": (
        ["--max-in-flight", "4", "--max-in-flight-per-model", "8"],
        "error: max_in_flight_per_model (8) must not exceed max_in_flight (4)",
    ),
    "image over the budget": (
        ["--max-decode-mb", "100", "--decode-budget-mb", "50"],
        "error: max_decode_mb (100.0) must not exceed decode_budget_mb (50.0)",
    ),
    "certificate without key": (
        ["--tls-cert", "server.crt"],
        "error: TLS needs both a certificate and its key (--tls-cert, --tls-key)",
    ),
    "client CA without certificate": (
        ["--tls-client-ca", "ca.crt"],
        "error: mutual TLS (--tls-client-ca) needs the server's own certificate",
    ),
    "certificate not there": (
        ["--tls-cert", "absent.crt", "--tls-key", "absent.key"],
        "error: cannot read the TLS certificate absent.crt",
    ),
    "token file not there": (
        ["--auth-token-file", "absent-token"],
        "error: cannot read the token file absent-token",
    ),
    "health port too large": (
        ["--health-port", "70000"],
        "argument --health-port: expected an integer >= 0",
    ),
    "zero poll period": (
        ["--repository-poll-s", "0"],
        "argument --repository-poll-s: expected a number > 0",
    ),
    "unknown control mode": (
        ["--model-control-mode", "sometimes"],
        "argument --model-control-mode: invalid choice: 'sometimes'",
    ),
    "models to load without explicit": (
        ["--load-model", "digits"],
        "error: models to load at start (['digits']) need mode 'explicit'",
    ),
    "explicit with processes": (
        ["--model-control-mode", "explicit", "--processes", "2"],
        "error: --model-control-mode explicit takes one process",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flag_values_are_refused_without_a_traceback(model_repository, name):
    flags, message = BAD_FLAGS[name]
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CLI, "serve", "--repository", str(model_repository),
         "--device", "cpu", "--metrics-port", "-1", "--port", "0", *flags],
        capture_output=True, text=True, timeout=WAIT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
