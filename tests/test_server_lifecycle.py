"""The model lifecycle on a real server: poll mode picks up new versions and keeps serving over
broken ones, explicit unload drains what is in flight, version policies, per-model batching
from config.pbtxt over the flags, health following each version's state, several processes
with TLS, a token and model control, and the defaults binding loopback. Servers bind 127.0.0.1
port 0 (or the server's loopback default); every wait is bounded."""

from __future__ import annotations

import ipaddress
import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from certificates import issue, make_ca
from conftest import DIGITS_SHAPE, running_server, write_model
from server_process import WAIT_S, ServerProcess

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.client import Client, VersionState
from stn_serve.client.healthcheck import check
from stn_serve.contract import CONFIG_FILE
from stn_serve.errors import NotFoundError, NotReadyError, StnServeError
from stn_serve.runtime import ModelControlOptions, RuntimeOptions

CPU = RuntimeOptions(device="cpu")
IMAGE = np.full(DIGITS_SHAPE, 0.5, np.float32)
TOKEN = "lifecycle-token-0123456789"


def publish(root: Path, name: str, version: int, broken: bool = False) -> Path:
    """Add a version as an operator should: written aside, renamed into place at once."""
    staging = root / ".staging" / name
    write_model(staging.parent, name, version, seed=version)
    if broken:
        (staging / str(version) / "model.onnx").write_bytes(b"not a model")
    target = root / name / str(version)
    (staging / str(version)).rename(target)
    shutil.rmtree(root / ".staging")
    return target


def wait_until(condition, timeout: float = WAIT_S, what: str = "the condition") -> float:
    """Seconds it took `condition()` to hold (AssertionError after `timeout`)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"gave up waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def served_version(port: int, **client_options) -> int:
    with Client(f"127.0.0.1:{port}", model="m", timeout=WAIT_S, **client_options) as client:
        return client.predict(IMAGE)[0].version


def health(port: int, service: str) -> str:
    return check(f"127.0.0.1:{port}", service, timeout=WAIT_S)


# Poll mode ---------------------------------------------------------------------------------------


def test_poll_serves_a_copied_version_within_two_poll_periods_and_never_a_broken_one(tmp_path):
    write_model(tmp_path, "m", 1, seed=1)
    (tmp_path / "m" / CONFIG_FILE).write_text("version_policy { latest { num_versions: 1 } }\n")
    poll_s = 2.0
    with ServerProcess(
        "--repository", str(tmp_path), "--device", "cpu", "--metrics-port", "-1",
        "--model-control-mode", "poll", "--repository-poll-s", str(poll_s),
    ) as server:  # fmt: skip
        port = server.serving()["port"]
        assert served_version(port) == 1
        publish(tmp_path, "m", 2)
        elapsed = wait_until(lambda: served_version(port) == 2, what="version 2 to answer")
        assert elapsed < 2 * poll_s
        assert health(port, "m") == "SERVING"

        broken = publish(tmp_path, "m", 3, broken=True)
        (left_out,) = server.wait_for("model left out", timeout=4 * poll_s)
        assert left_out["path"] == str(broken)
        assert served_version(port) == 2 and health(port, "m") == "SERVING"
        with Client(f"127.0.0.1:{port}", timeout=WAIT_S) as client:
            (info,) = client.list_models()
        assert (info.name, info.version, info.ready) == ("m", 2, True)
        assert [(s.version, s.state) for s in info.states] == [
            (1, "UNAVAILABLE"),  # unloaded by the policy once 2 was ready
            (2, "READY"),
            (3, "UNAVAILABLE"),
        ]
        assert "cannot load" in info.states[2].reason
        server.send(signal.SIGTERM)
        assert server.wait() == 0


# Explicit mode: load, unload and the drain ------------------------------------------------------


class Held:
    """Holds every run of `model` until `release()`; counts the runs that began."""

    def __init__(self, model):
        self.began = threading.Semaphore(0)
        self.runs: list[int] = []
        self._released = threading.Event()
        predict = model.predict

        def held(images):
            self.runs.append(len(images))
            self.began.release()
            assert self._released.wait(WAIT_S), "never released"
            return predict(images)

        model.predict = held

    def wait_for_runs(self, count: int) -> None:
        for _ in range(count):
            assert self.began.acquire(timeout=WAIT_S), f"{count} runs did not begin"

    def release(self) -> None:
        self._released.set()


def predict_future(channel, model: str = "m", images: int = 1):
    tensor = stn_pb2.Tensor(
        shape=DIGITS_SHAPE, dtype=stn_pb2.DATA_TYPE_FLOAT32, data=IMAGE.tobytes()
    )
    request = stn_pb2.PredictRequest(model=model, images=[stn_pb2.Image(tensor=tensor)] * images)
    return stn_pb2_grpc.StnServiceStub(channel).Predict.future(request, timeout=WAIT_S)


def test_explicit_unload_drains_the_requests_in_flight_and_health_follows(tmp_path):
    import tritonclient.grpc as triton

    write_model(tmp_path, "m", 1)
    write_model(tmp_path, "other", 1)
    control = ModelControlOptions(mode="explicit", load_models=("m",))
    with (
        running_server(tmp_path, runtime_options=CPU, model_control=control) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert server.repository.names() == ["m"]
        assert health(port, "other") == "NOT_FOUND"  # never loaded
        held = Held(server.repository.get("m"))
        in_flight = [predict_future(channel) for _ in range(4)]
        held.wait_for_runs(1)  # one run holds the model; the other requests wait in its queue
        unloading = threading.Thread(target=client.unload_model, args=("m",))
        unloading.start()
        # Health turns at once; new requests are refused while the old ones drain.
        wait_until(lambda: health(port, "m") == "NOT_SERVING", what="NOT_SERVING")
        assert not client.is_model_ready("m")
        with pytest.raises(grpc.RpcError) as refused:
            predict_future(channel).result()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(0.2)
        assert unloading.is_alive(), "the unload must wait for the requests holding the model"
        held.release()
        assert [len(f.result().predictions) for f in in_flight] == [1, 1, 1, 1]
        unloading.join(WAIT_S)
        assert not unloading.is_alive()
        assert client.is_server_ready()  # explicit mode: ready with no model loaded
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {(m["name"], m.get("state", "")) for m in index} == {
            ("m", "UNAVAILABLE"),
            ("other", ""),
        }
        client.load_model("other")
        assert health(port, "other") == "SERVING"
        assert len(predict_future(channel, "other").result().predictions) == 1
        client.close()


# Version policies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", [3]),  # Triton's default when the file sets none: the newest
        ("version_policy { latest { num_versions: 2 } }", [2, 3]),
        ("version_policy { specific { versions: [1, 3] } }", [1, 3]),
        ("version_policy { all { } }", [1, 2, 3]),
    ],
    ids=["default", "latest-2", "specific", "all"],
)
def test_version_policies_choose_what_the_server_serves(tmp_path, policy, served):
    for version in (1, 2, 3):
        write_model(tmp_path, "m", version, seed=version)
    (tmp_path / "m" / CONFIG_FILE).write_text(policy)
    with (
        running_server(tmp_path, runtime_options=CPU) as (_, port),
        Client(f"127.0.0.1:{port}", model="m", timeout=WAIT_S) as client,
    ):
        (info,) = client.list_models()
        assert info.versions == served
        assert info.states == [VersionState(v, "READY") for v in served]
        assert client.predict(IMAGE)[0].version == served[-1]
        for version in (1, 2, 3):
            if version in served:
                assert client.predict(IMAGE, version=version)[0].version == version
            else:
                with pytest.raises(NotFoundError, match=f"has no version {version}"):
                    client.predict(IMAGE, version=version)


# Per-model batching from config.pbtxt -----------------------------------------------------------


def test_config_pbtxt_batching_wins_over_the_flags_per_model(tmp_path, caplog):
    import tritonclient.grpc as triton

    for name in ("unbatched", "flags", "two"):
        write_model(tmp_path, name, 1)
    (tmp_path / "unbatched" / CONFIG_FILE).write_text(
        "max_batch_size: 1\noptimization { priority: PRIORITY_MAX }\n"
    )
    (tmp_path / "two" / CONFIG_FILE).write_text("instance_group [ { count: 2 } ]\n")
    flags = {"max_batch_size": 8, "max_queue_delay_us": 0, "instances": 1}
    with (
        caplog.at_level(logging.WARNING),
        running_server(tmp_path, runtime_options=CPU, **flags) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        held = {name: Held(server.repository.get(name)) for name in ("unbatched", "flags", "two")}
        for name in ("unbatched", "flags"):
            futures = [predict_future(channel, name)]
            held[name].wait_for_runs(1)
            futures += [predict_future(channel, name) for _ in range(3)]
            wait_until(
                lambda n=name: (
                    server.metrics.sample("stn_queue_depth", {"model": n, "version": "1"}) == 3
                ),
                what=f"3 requests queued for {name}",
            )
            held[name].release()
            assert all(len(f.result().predictions) == 1 for f in futures)
        assert held["unbatched"].runs == [1, 1, 1, 1]  # the file's max_batch_size 1
        assert held["flags"].runs == [1, 3]  # no file: the flags' batching
        # Two instances of "two": while one run is held, a full batch starts on the other.
        futures = [predict_future(channel, "two")]
        held["two"].wait_for_runs(1)
        futures.append(predict_future(channel, "two", images=8))
        held["two"].wait_for_runs(1)
        held["two"].release()
        assert [len(f.result().predictions) for f in futures] == [1, 8]
        assert held["two"].runs == [1, 8]
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        config = client.get_model_config("two").config
        assert (config.max_batch_size, [g.count for g in config.instance_group]) == (8, [2])
        client.close()
    unfollowed = "model configuration fields not followed"
    reported = [r.fields for r in caplog.records if r.message == unfollowed]
    assert reported == [["optimization"]]  # once, when the file was read


def test_a_config_change_reloads_the_model_with_its_new_batching(tmp_path):
    import tritonclient.grpc as triton

    write_model(tmp_path, "m", 1)
    control = ModelControlOptions(mode="poll", poll_s=600)
    with running_server(tmp_path, runtime_options=CPU, model_control=control) as (server, port):
        first = server.repository.get("m")
        assert served_version(port) == 1
        assert first in server.path.dispatcher.models()
        (tmp_path / "m" / CONFIG_FILE).write_text("max_batch_size: 4\n")
        assert server.rescan()  # SIGHUP's rescan
        wait_until(lambda: server.repository.get("m") is not first, what="the reload")
        wait_until(lambda: first not in server.path.dispatcher.models(), what="the old batcher")
        assert not first.ready and served_version(port) == 1
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_config("m").config.max_batch_size == 4
        client.close()


# Several processes, TLS, a token and model control ----------------------------------------------


def test_every_process_serves_tls_checks_the_token_and_rescans_on_sighup(tmp_path):
    repository = tmp_path / "models"
    write_model(repository, "m", 1)
    ca = make_ca(tmp_path, "ca")
    certificate = issue(ca, tmp_path, "server")
    (tmp_path / "token").write_text(TOKEN)
    with ServerProcess(
        "--repository", str(repository), "--device", "cpu", "--metrics-port", "-1",
        "--processes", "2", "--tls-cert", str(certificate.cert), "--tls-key",
        str(certificate.key), "--auth-token-file", str(tmp_path / "token"),
        "--model-control-mode", "poll", "--repository-poll-s", "600", "--health-port", "0",
    ) as server:  # fmt: skip
        serving = server.serving()
        port, health_port = serving["port"], serving["health_port"]
        secure = {"tls_ca": ca.cert, "token": TOKEN, "channels": 4}
        assert served_version(port, **secure) == 1
        with pytest.raises(StnServeError, match="UNAUTHENTICATED"):
            served_version(port, tls_ca=ca.cert)
        with pytest.raises(NotReadyError):
            served_version(port, token=TOKEN)  # plaintext
        assert check(f"127.0.0.1:{health_port}") == "SERVING"  # plaintext, no token

        publish(repository, "m", 2)
        server.send(signal.SIGHUP)
        loaded = server.wait_for("model loaded", count=4)  # 2 processes x (version 1, then 2)
        assert sorted(r["version"] for r in loaded) == [1, 1, 2, 2]
        # Every process serves version 2: fresh connections land on either.
        for _ in range(4):
            assert served_version(port, **secure) == 2
        server.send(signal.SIGTERM)
        assert server.wait() == 0


# Safe defaults ----------------------------------------------------------------------------------


def listening_address(port: int) -> str:
    """The local address of the socket listening on TCP `port`, from /proc/net/tcp and tcp6
    (gRPC binds an IPv4 address on an IPv6 socket, as ::ffff:a.b.c.d)."""
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as lines:
            for line in lines.readlines()[1:]:
                local, _, state = line.split()[1:4]
                address, hex_port = local.split(":")
                if int(hex_port, 16) != port or state != "0A":  # 0A: LISTEN
                    continue
                # Each 32-bit word is in the host's (little-endian) byte order.
                words = bytes.fromhex(address)
                raw = b"".join(words[i : i + 4][::-1] for i in range(0, size, 4))
                found = ipaddress.ip_address(raw)
                return str(getattr(found, "ipv4_mapped", None) or found)
    raise AssertionError(f"nothing listens on port {port}")


def test_the_defaults_bind_loopback_for_grpc_and_metrics(model_repository):
    with ServerProcess(
        "--repository", str(model_repository), "--device", "cpu", "--metrics-port", "0", host=None
    ) as server:
        serving = server.serving()
        assert serving["host"] == "127.0.0.1"
        assert listening_address(serving["port"]) == "127.0.0.1"
        assert listening_address(serving["metrics_port"]) == "127.0.0.1"
        assert not [r for r in server.records if r["level"] == "WARNING"]
        server.send(signal.SIGTERM)
        assert server.wait() == 0


def test_serve_passes_its_flags_to_the_server_and_warns_of_plaintext_beyond_loopback(
    monkeypatch, tmp_path, caplog
):
    """The command line's wiring, without binding anything: `serve` itself is replaced."""
    import stn_serve.server
    from stn_serve.cli import build_parser
    from stn_serve.commands import serve as serve_command

    ca = make_ca(tmp_path, "ca")
    certificate = issue(ca, tmp_path, "server")
    (tmp_path / "token").write_text(TOKEN)
    given = []
    monkeypatch.setattr(stn_serve.server, "serve", lambda *args: given.append(args) or 0)
    common = ["serve", "--repository", "r", "--port", "0", "--metrics-port", "-1"]
    secured = [
        "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key),
        "--tls-client-ca", str(ca.cert), "--auth-token-file", str(tmp_path / "token"),
        "--model-control-mode", "poll", "--repository-poll-s", "5", "--no-reflection",
        "--metrics-host", "0.0.0.0", "--health-port", "0", "--health-host", "10.0.0.7",
    ]  # fmt: skip
    exposed = "serving plaintext gRPC beyond this machine"
    with caplog.at_level(logging.WARNING):
        for flags, warned in (
            ([], False),  # 127.0.0.1
            (["--host", "0.0.0.0", *secured], False),  # TLS
            (["--host", "0.0.0.0"], True),
            (["--host", "::ffff:127.0.0.1"], False),
        ):
            caplog.clear()
            assert serve_command.run(build_parser().parse_args([*common, *flags])) == 0
            assert any(exposed in r.message for r in caplog.records) is warned, flags
    repository, host, port, options, _ = given[1]
    assert (repository, host, port) == ("r", "0.0.0.0", 0)
    assert (options.tls_cert, options.tls_key) == (str(certificate.cert), str(certificate.key))
    assert options.tls_client_ca == str(ca.cert)
    assert options.auth_token_file == str(tmp_path / "token")
    assert options.model_control == ModelControlOptions(mode="poll", poll_s=5.0)
    assert (options.reflection, options.metrics_host) == (False, "0.0.0.0")
    assert (options.health_port, options.health_host) == (0, "10.0.0.7")
    defaults = given[0][3]
    assert (defaults.reflection, defaults.metrics_host, defaults.health_port) == (
        True,
        "127.0.0.1",
        None,
    )
    assert given[0][1] == "127.0.0.1"
