"""Requests that are small on the wire and large in memory or CPU are refused cheaply: a tiny
PNG that claims 6300x6300 16-bit pixels, a gzip-compressed request that would inflate past the
message limit, and decoding that outlives its deadline. Peak memory is read from the server
process (/proc/PID/status VmHWM), CPU time from /proc/PID/stat."""

from __future__ import annotations

import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
from PIL import Image
from server_process import WAIT_S, ServerProcess

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.bench.serve_load import cpu_seconds

PEAK_LIMIT_MB = 512


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def sixteen_bit_png(side: int) -> bytes:
    """A valid, black, 16-bit grey PNG of side x side pixels: a few dozen KB that decode to
    side² x 2 bytes."""
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)  # filter byte, then the row
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def encoded_request(*images: bytes) -> stn_pb2.PredictRequest:
    return stn_pb2.PredictRequest(model="digits", images=[stn_pb2.Image(encoded=i) for i in images])


def serve(repository, *flags: str) -> ServerProcess:
    return ServerProcess(
        "--repository", str(repository), "--device", "cpu", "--metrics-port", "-1", *flags
    )


def test_tiny_png_claiming_gigapixels_is_refused_before_decoding(model_repository):
    """Ten 6300x6300 16-bit PNGs at once (~80 KB each on the wire): each is INVALID_ARGUMENT
    naming the limit, and the server's peak memory stays under 512 MiB."""
    png = sixteen_bit_png(6300)
    assert len(png) < 100_000
    assert Image.open(io.BytesIO(png)).size == (6300, 6300)
    with serve(model_repository) as server, ThreadPoolExecutor(10) as pool:
        port = server.serving()["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stn_pb2_grpc.StnServiceStub(channel)

            def call(_):
                try:
                    stub.Predict(encoded_request(png), timeout=WAIT_S)
                except grpc.RpcError as error:
                    return error.code(), error.details()
                return grpc.StatusCode.OK, ""

            before_mb = server.peak_memory_mb()
            answers = list(pool.map(call, range(10)))
            peak_mb = server.peak_memory_mb()
    assert {code for code, _ in answers} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("6300x6300 I;16" in d and "--max-decode-mb" in d for _, d in answers), answers[0]
    assert peak_mb < PEAK_LIMIT_MB
    assert peak_mb - before_mb < 32, (before_mb, peak_mb)


def test_compressed_request_is_refused_before_it_is_inflated(model_repository):
    """gzip makes 64 MiB of zeros (four times the message limit) about 64 KB on the wire; the
    server accepts no compressed request, so it never inflates it."""
    inflated = encoded_request(b"\0" * (64 << 20))
    with serve(model_repository) as server:
        port = server.serving()["port"]
        before_mb = server.peak_memory_mb()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stn_pb2_grpc.StnServiceStub(channel)
            try:
                stub.Predict(inflated, timeout=WAIT_S, compression=grpc.Compression.Gzip)
            except grpc.RpcError as error:
                code, details = error.code(), error.details()
            peak_mb = server.peak_memory_mb()
            response = stub.Predict(
                encoded_request(png_of(Image.new("L", (28, 28)))), timeout=WAIT_S
            )
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "Compression algorithm 'gzip' is disabled" in details
    assert peak_mb - before_mb < 32, (before_mb, peak_mb)
    assert len(response.predictions) == 1


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cpu_until_idle(pid: int) -> float:
    """The process's CPU time once it has stopped working (under 50 ms in half a second)."""
    deadline = time.monotonic() + WAIT_S
    spent = cpu_seconds([pid])
    while time.monotonic() < deadline:
        time.sleep(0.5)
        before, spent = spent, cpu_seconds([pid])
        if spent - before < 0.05:
            break
    return spent


def test_decoding_stops_when_the_deadline_passes(model_repository):
    """64 black 2000x2000 RGB PNGs (12 KB each, within every limit; about 25 ms each to decode
    here, 1.6 s in all) with a 0.2 s deadline: the server answers DEADLINE_EXCEEDED and stops
    decoding instead of spending seconds for a client that has gone."""
    heavy = encoded_request(*[png_of(Image.new("RGB", (2000, 2000)))] * 64)
    with serve(model_repository) as server:
        port = server.serving()["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stn_pb2_grpc.StnServiceStub(channel)
            started_cpu = cpu_seconds([server.pid])
            try:
                stub.Predict(heavy, timeout=0.2)
            except grpc.RpcError as error:
                code = error.code()
            spent_s = cpu_until_idle(server.pid) - started_cpu
            small = encoded_request(png_of(Image.new("RGB", (28, 28))))
            assert len(stub.Predict(small, timeout=WAIT_S).predictions) == 1
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert spent_s < 0.8, spent_s
