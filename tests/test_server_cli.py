"""`stn-serve serve` as a process: start-up, a repository with a broken model, SIGTERM, --device cuda."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
from conftest import DIGITS_SHAPE, cuda_usable, running_server, write_model

from stn_serve._proto.inference import grpc_service_pb2, grpc_service_pb2_grpc
from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.cli import build_parser

WAIT_S = 120
# Runs the CLI with torch unimportable, as in a serving container.
NO_TORCH_CLI = "import sys; sys.modules['torch'] = None; from stn_serve.cli import main; sys.exit(main(sys.argv[1:]))"


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


def test_broken_model_is_left_out_and_the_others_serve(repository_with_broken_model):
    with running_server(repository_with_broken_model) as (server, port):
        assert list(server.repository.failures) == [repository_with_broken_model / "broken" / "1"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stn_pb2_grpc.StnServiceStub(channel)
            assert [
                m.name for m in stub.ListModels(stn_pb2.ListModelsRequest(), timeout=30).models
            ] == ["digits"]
            assert len(stub.Predict(good_request(), timeout=30).predictions) == 1
            inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            ready = inference.ModelReady(
                grpc_service_pb2.ModelReadyRequest(name="broken"), timeout=30
            )
            assert not ready.ready
            assert inference.ServerReady(grpc_service_pb2.ServerReadyRequest(), timeout=30).ready


def serve_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", NO_TORCH_CLI, "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_logs_until(process: subprocess.Popen, message: str) -> tuple[dict, list[dict]]:
    """JSON log records from the process's stderr up to the first with `message`."""
    records = []
    for line in process.stderr:
        if line.startswith("{"):
            records.append(json.loads(line))
            if records[-1]["message"] == message:
                return records[-1], records
    raise AssertionError(
        f"the server exited ({process.wait(WAIT_S)}) before logging {message!r}: {records}"
    )


def test_serve_without_torch_logs_left_out_models_and_exits_0_on_sigterm(
    repository_with_broken_model,
):
    process = serve_process(
        "--repository",
        str(repository_with_broken_model),
        "--device",
        "cpu",
        "--metrics-port",
        "0",
        "--grace-s",
        "5",
    )
    try:
        serving, records = read_logs_until(process, "serving")
        left_out = [r for r in records if r["message"] == "model left out"]
        assert [r["path"] for r in left_out] == [str(repository_with_broken_model / "broken" / "1")]
        assert "cannot load" in left_out[0]["reason"]
        with grpc.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            response = stn_pb2_grpc.StnServiceStub(channel).Predict(good_request(), timeout=WAIT_S)
        assert (response.model, response.version) == ("digits", 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
        read_logs_until(process, "stopped")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT_S)


def test_device_cuda_without_cuda_fails_at_start_up(model_repository):
    if cuda_usable():
        pytest.skip("CUDA works here; the failure path needs a machine without it")
    process = serve_process(
        "--repository", str(model_repository), "--device", "cuda", "--metrics-port", "-1"
    )
    _, stderr = process.communicate(timeout=WAIT_S)
    assert process.returncode == 2
    assert "error: --device cuda: ONNX Runtime could not use the CUDAExecutionProvider" in stderr


def test_empty_repository_fails_at_start_up(tmp_path):
    process = serve_process(
        "--repository", str(tmp_path), "--device", "cpu", "--metrics-port", "-1"
    )
    _, stderr = process.communicate(timeout=WAIT_S)
    assert process.returncode == 2
    assert f"error: no model in {tmp_path} could be loaded: it is empty" in stderr


def test_help_documents_every_flag_with_its_default():
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} >= {
        "repository",
        "host",
        "port",
        "metrics_port",
        "device",
        "intra_op_threads",
        "inter_op_threads",
        "graph_optimization",
        "workers",
        "instances",
        "max_batch_size",
        "max_queue_delay_us",
        "max_queue_size",
        "max_images_per_request",
        "max_message_mb",
        "grace_s",
    }
    help_text = serve.format_help()
    for action in flags:
        assert action.help, action.dest
        assert f"(default: {action.default})" in " ".join(help_text.split()), action.dest


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
        # serve_process passes --port 0 first; the later flag wins
        process = serve_process(
            "--repository",
            str(model_repository),
            "--device",
            "cpu",
            "--metrics-port",
            "0",
            flag,
            str(port),
        )
        _, stderr = process.communicate(timeout=WAIT_S)
    assert process.returncode == 2
    assert message.format(port=port) in stderr
