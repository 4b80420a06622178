"""Shutting down without losing work, and several server processes on one port.

SIGTERM under load: health reads NOT_SERVING first, requests are still accepted for
--drain-delay-s, then every accepted request is answered and the process exits 0; open streams
answer what they have read and end with UNAVAILABLE. `serve --processes 2` serves one port from
two processes, sums their metrics on one endpoint, restarts a process that dies, passes SIGHUP
on, and drains both.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import DIGITS_SHAPE, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from server_process import WAIT_S, ServerProcess

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.client import Client
from stn_serve.client.channel import open_channels

DRAIN_DELAY_S = 1.0
LANES = 32
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def request(value: float = 0.5) -> stn_pb2.PredictRequest:
    image = np.full(DIGITS_SHAPE, value, np.float32)
    tensor = stn_pb2.Tensor(
        shape=DIGITS_SHAPE, dtype=stn_pb2.DATA_TYPE_FLOAT32, data=image.tobytes()
    )
    return stn_pb2.PredictRequest(model="digits", images=[stn_pb2.Image(tensor=tensor)])


class Load:
    """LANES closed-loop lanes of unary Predicts over plain channels (no retries), each lane
    stopping at its first failure or once `stop` is set; every request recorded as (sent,
    answered, code)."""

    def __init__(self, port: int):
        self.outcomes: list[tuple[float, float, grpc.StatusCode]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
        self._lanes = [
            threading.Thread(target=self._lane, args=(self._channels[i % 8],), daemon=True)
            for i in range(LANES)
        ]
        for lane in self._lanes:
            lane.start()

    def _lane(self, channel) -> None:
        stub = stn_pb2_grpc.StnServiceStub(channel)
        code = OK
        while code == OK and not self.stop.is_set():
            sent = time.monotonic()
            try:
                stub.Predict(request(), timeout=WAIT_S)
            except grpc.RpcError as error:
                code = error.code()
            with self._lock:
                self.outcomes.append((sent, time.monotonic(), code))

    def answered(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def join(self) -> None:
        for lane in self._lanes:
            lane.join(WAIT_S)
            assert not lane.is_alive(), "a lane never ended"
        for channel in self._channels:
            channel.close()


class HealthWatch:
    """Polls grpc.health.v1 Check("") every 20 ms: (time, status or status code); sets
    `not_serving` when it reads NOT_SERVING."""

    def __init__(self, port: int):
        self.seen: list[tuple[float, object]] = []
        self.not_serving = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(port,), daemon=True)
        self._thread.start()

    def _watch(self, port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.wait(0.02):
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                except grpc.RpcError as error:
                    status = error.code()
                self.seen.append((time.monotonic(), status))
                if status == NOT_SERVING:
                    self.not_serving.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def drained_under_load(repository, stop_when_not_serving: bool):
    """SIGTERM a server under LANES-concurrent load; (when the signal was sent, the requests'
    outcomes, what health read). With `stop_when_not_serving` the load stops once health reads
    NOT_SERVING, as a load balancer's would."""
    with ServerProcess(
        "--repository", str(repository), "--device", "cpu", "--metrics-port", "-1",
        "--drain-delay-s", str(DRAIN_DELAY_S), "--grace-s", "30",
    ) as server:  # fmt: skip
        port = server.serving()["port"]
        load = Load(port)
        watch = HealthWatch(port)
        wait_until(lambda: load.answered() >= 4 * LANES, "the load to run")
        signalled = time.monotonic()
        server.send(signal.SIGTERM)
        if stop_when_not_serving:
            assert watch.not_serving.wait(WAIT_S)
            load.stop.set()
        assert server.wait() == 0
        load.join()
        watch.stop()
        server.wait_for("stopped")
    outcomes = load.outcomes
    assert any(sent < signalled < answered for sent, answered, _ in outcomes), (
        "no request was in flight when SIGTERM came"
    )
    return signalled, outcomes, watch.seen


def test_sigterm_under_load_loses_nothing_when_clients_follow_health(model_repository):
    signalled, outcomes, seen = drained_under_load(model_repository, stop_when_not_serving=True)
    assert {code for _, _, code in outcomes} == {OK}
    # Health read NOT_SERVING after the signal while requests were still being answered.
    after = [(at, status) for at, status in seen if at > signalled]
    assert next(status for _, status in after if status != SERVING) == NOT_SERVING, seen
    not_serving_at = next(at for at, status in after if status == NOT_SERVING)
    assert any(answered > not_serving_at for _, answered, _ in outcomes)


def test_sigterm_under_load_answers_every_request_sent_before_it_stops_accepting(
    model_repository,
):
    """Clients that keep sending: every request sent before the signal and during the drain
    delay is answered; once the server stops accepting, new calls fail with UNAVAILABLE, or
    CANCELLED from gRPC itself for a call that reached the socket as it closed and was never
    handed to the server."""
    signalled, outcomes, _ = drained_under_load(model_repository, stop_when_not_serving=False)
    stops_accepting = signalled + DRAIN_DELAY_S
    failed = [(round(sent - signalled, 3), code) for sent, _, code in outcomes if code != OK]
    assert failed, "the load should have outlasted the drain"
    assert all(code in (UNAVAILABLE, grpc.StatusCode.CANCELLED) for _, code in failed), failed
    margin_s = 0.1  # the signal's delivery and the start of the drain
    assert all(sent > DRAIN_DELAY_S - margin_s for sent, _ in failed), failed
    assert all(code == OK for sent, _, code in outcomes if sent < stops_accepting - margin_s)
    assert any(code == OK for sent, _, code in outcomes if sent > signalled)  # during the delay


def test_open_streams_answer_what_they_read_then_end_with_unavailable(model_repository):
    requests: queue.Queue = queue.Queue()
    with running_server(model_repository, drain_delay_s=DRAIN_DELAY_S, grace_s=30) as (
        server,
        port,
    ), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = stn_pb2_grpc.StnServiceStub(channel).PredictStream(
            iter(requests.get, None), timeout=WAIT_S
        )
        for index in range(3):
            requests.put(request(0.1 * index))
            assert len(next(stream).predictions) == 1
        draining = threading.Thread(target=server.drain)
        draining.start()
        wait_until(lambda: not server.serving, "the drain to begin")
        requests.put(request(0.9))  # still read and answered during the delay
        assert len(next(stream).predictions) == 1
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        draining.join(WAIT_S)
    assert ended.value.code() == UNAVAILABLE
    assert "every request read on this stream was answered" in ended.value.details()


def connections_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """Established TCP connections on local `port` held by each of `pids` (from /proc)."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    inodes[fields[9]] = True
    held = {}
    for pid in pids:
        sockets = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                sockets += 1
        held[pid] = sockets
    return held


def predictions_counted(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "stn_requests_total"
        and sample.labels == {"method": "Predict", "model": "digits", "code": "OK"}
    )


def test_two_processes_share_the_port_sum_their_metrics_restart_and_drain(model_repository):
    with ServerProcess(
        "--repository", str(model_repository), "--device", "cpu", "--processes", "2",
        "--metrics-port", "0", "--grace-s", "10",
    ) as server:  # fmt: skip
        # Each worker logs "serving", then the supervisor, with every worker's pid.
        serving = next(r for r in server.wait_for("serving", count=3) if "pids" in r)
        port, workers = serving["port"], serving["pids"]
        assert len(set(workers)) == 2 and server.pid not in workers
        # The kernel spreads connections over the processes: open channels until both hold one.
        channels = []
        while min(connections_by_process(port, workers).values()) == 0:
            assert len(channels) < 64, connections_by_process(port, workers)
            channels += open_channels(f"127.0.0.1:{port}", 4)
            for channel in channels[-4:]:
                grpc.channel_ready_future(channel).result(timeout=WAIT_S)
        stubs = [stn_pb2_grpc.StnServiceStub(channel) for channel in channels]
        for stub in stubs:  # one request on every connection: both processes answer some
            assert len(stub.Predict(request(), timeout=WAIT_S).predictions) == 1
        assert predictions_counted(serving["metrics_port"]) == len(stubs)

        os.kill(workers[0], signal.SIGKILL)
        server.wait_for("a server process died; starting another")
        restarted = server.wait_for("serving", count=4)[-1]  # 2 workers, the supervisor, 1 more
        assert restarted["pid"] not in workers
        with Client(f"127.0.0.1:{port}", model="digits", channels=4, timeout=WAIT_S) as client:
            for _ in range(8):
                assert len(client.predict(np.full(DIGITS_SHAPE, 0.5, np.float32))) == 1
        # The dead process's counts stay in the sum.
        assert predictions_counted(serving["metrics_port"]) == len(stubs) + 8
        for channel in channels:
            channel.close()

        server.send(signal.SIGHUP)  # passed on to both; neither stops
        server.wait_for("SIGHUP: passed on to every server process")
        server.wait_for("SIGHUP ignored: only model control mode 'poll' rescans the repository", 2)
        with Client(f"127.0.0.1:{port}", model="digits", channels=4, timeout=WAIT_S) as client:
            assert len(client.predict(np.full(DIGITS_SHAPE, 0.5, np.float32))) == 1

        server.send(signal.SIGTERM)
        assert server.wait() == 0
        server.wait_for("stopped", count=3)  # both live workers, then the supervisor
        for pid in (workers[1], restarted["pid"]):
            assert not os.path.exists(f"/proc/{pid}")
