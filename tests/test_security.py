"""Transport security: TLS and mutual TLS with our client and Triton's, certificate files checked
and reloaded, bearer tokens (sync and asyncio servers), and the plaintext health-only port.

The servers here are plain gRPC servers on 127.0.0.1 port 0 with the health service and small
stand-ins for stn.v1 and the Open Inference Protocol, secured by `stn_serve.server.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import threading
from concurrent import futures

import grpc
import pytest
from certificates import issue, make_ca
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stn_serve._proto.inference import grpc_service_pb2 as inference_pb2
from stn_serve._proto.inference import grpc_service_pb2_grpc
from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.client import Client
from stn_serve.client.healthcheck import check
from stn_serve.client.healthcheck import main as healthcheck_main
from stn_serve.contract.auth import read_token
from stn_serve.errors import InvalidInputError, NotReadyError, StnServeError
from stn_serve.server.health_port import create_health_server
from stn_serve.server.security import (
    AsyncTokenAuthInterceptor,
    TokenAuthInterceptor,
    check_certificate_files,
    server_credentials,
)

TOKEN = "s3cret-token-0123456789abcdef"


class Models(stn_pb2_grpc.StnServiceServicer):
    def ListModels(self, request, context):
        return stn_pb2.ListModelsResponse(models=[stn_pb2.ModelDescription(name="digits")])

    def DescribeModel(self, request, context):
        return stn_pb2.ModelDescription(name="digits")

    def PredictStream(self, request_iterator, context):
        for request in request_iterator:
            yield stn_pb2.PredictResponse(model=request.model)


class Inference(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with a server and a client certificate; another CA with a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(folder, "ca"), make_ca(folder, "other-ca")
    return {
        "ca": ca,
        "server": issue(ca, folder, "server"),
        "client": issue(ca, folder, "client", client=True),
        "stranger": issue(other_ca, folder, "stranger", client=True),
        "other_ca": other_ca,
        "encrypted": issue(ca, folder, "encrypted", passphrase=b"pass"),
        "folder": folder,
    }


def add_services(server: grpc.Server) -> health.HealthServicer:
    stn_pb2_grpc.add_StnServiceServicer_to_server(Models(), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return health_servicer


@contextlib.contextmanager
def serving(credentials=None, interceptors=()):
    """A started server on 127.0.0.1 port 0: (port, health servicer)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 0)],
    )
    health_servicer = add_services(server)
    address = "127.0.0.1:0"
    port = (
        server.add_secure_port(address, credentials)
        if credentials
        else server.add_insecure_port(address)
    )
    server.start()
    try:
        yield port, health_servicer
    finally:
        server.stop(None)


def models(port: int, **security) -> list[str]:
    with Client(f"localhost:{port}", timeout=5, **security) as client:
        return [m.name for m in client.list_models()]


def triton(port: int, **kwargs):
    import tritonclient.grpc as triton_grpc

    return triton_grpc.InferenceServerClient(f"localhost:{port}", **kwargs)


def served_certificate(port: int, ca_file) -> x509.Certificate:
    """The certificate a new TLS connection to the server gets (gRPC needs ALPN h2)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


# TLS ----------------------------------------------------------------------------------------------


def test_tls_works_with_our_client_and_tritonclient(pki):
    with serving(server_credentials(pki["server"].cert, pki["server"].key)) as (port, _):
        assert models(port, tls_ca=pki["ca"].cert) == ["digits"]
        assert triton(port, ssl=True, root_certificates=str(pki["ca"].cert)).is_server_live()
        assert check(f"localhost:{port}", tls_ca=pki["ca"].cert) == "SERVING"


def test_a_plaintext_client_is_refused(pki):
    with serving(server_credentials(pki["server"].cert, pki["server"].key)) as (port, _):
        with pytest.raises(NotReadyError, match="UNAVAILABLE"):
            models(port)
        assert check(f"localhost:{port}", timeout=2) == "UNAVAILABLE"
        assert models(port, tls_ca=pki["ca"].cert) == ["digits"]  # still serving


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(pki):
    with serving(server_credentials(pki["server"].cert, pki["server"].key)) as (port, _):
        with pytest.raises(NotReadyError):
            models(port, tls_ca=pki["other_ca"].cert)
        with pytest.raises(NotReadyError):
            models(port, tls=True)  # the system's CAs do not know this one either


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki):
    server, client, stranger = pki["server"], pki["client"], pki["stranger"]
    with serving(server_credentials(server.cert, server.key, pki["ca"].cert)) as (port, _):
        ca = pki["ca"].cert
        assert models(port, tls_ca=ca, tls_cert=client.cert, tls_key=client.key) == ["digits"]
        assert triton(
            port,
            ssl=True,
            root_certificates=str(ca),
            private_key=str(client.key),
            certificate_chain=str(client.cert),
        ).is_server_live()
        with pytest.raises(StnServeError, match="UNAVAILABLE"):
            models(port, tls_ca=ca)  # no certificate
        with pytest.raises(StnServeError, match="UNAVAILABLE"):
            models(port, tls_ca=ca, tls_cert=stranger.cert, tls_key=stranger.key)
        assert check(f"localhost:{port}", tls_ca=ca, timeout=2) == "UNAVAILABLE"


def test_the_health_check_command_speaks_tls(pki, capsys):
    with serving(server_credentials(pki["server"].cert, pki["server"].key)) as (port, _):
        # A probe inside a pod connects to localhost; the certificate names the service.
        argv = ["--address", f"127.0.0.1:{port}", "--tls-ca", str(pki["ca"].cert)]
        assert healthcheck_main([*argv, "--tls-server-name", "localhost"]) == 0
        assert "SERVING" in capsys.readouterr().out
        assert healthcheck_main(["--address", f"127.0.0.1:{port}", "--timeout", "2"]) == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            lambda p, f: (f / "absent.crt", p["server"].key, None),
            r"cannot read the TLS certificate .*absent\.crt",
        ),
        (lambda p, f: (p["server"].key.parent / "ca.srl", p["server"].key, None), r"cannot read"),
        (lambda p, f: (f / "garbage.crt", p["server"].key, None), r"garbage\.crt is not PEM"),
        (
            lambda p, f: (p["server"].cert, p["client"].key, None),
            r"client\.key does not belong to the certificate .*server\.crt",
        ),
        (
            lambda p, f: (p["encrypted"].cert, p["encrypted"].key, None),
            r"encrypted\.key is encrypted",
        ),
        (
            lambda p, f: (p["server"].cert, p["server"].key, f / "garbage.crt"),
            r"client CA file .*garbage\.crt is not PEM",
        ),
        (
            lambda p, f: (p["server"].cert, p["server"].key, f / "empty-ca.crt"),
            r"empty-ca\.crt holds no usable CA certificate",
        ),
    ],
    ids=[
        "missing",
        "unreadable",
        "not-pem",
        "key-of-another",
        "encrypted-key",
        "ca-not-pem",
        "ca-empty",
    ],
)
def test_bad_certificate_files_are_named_with_the_problem(pki, tmp_path, files, message):
    (tmp_path / "garbage.crt").write_text("not a certificate")
    (tmp_path / "empty-ca.crt").write_text(
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    )
    cert, key, ca = files(pki, tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        check_certificate_files(cert, key, ca)
    with pytest.raises(InvalidInputError, match=message):
        server_credentials(cert, key, ca)


def test_renewed_certificate_files_are_served_to_new_connections(pki, tmp_path, caplog):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    with serving(server_credentials(cert, key)) as (port, _):
        assert served_certificate(port, pki["ca"].cert) == pki["server"].certificate
        renewed = issue(pki["ca"], tmp_path / "renewed", "server")
        shutil.copy(renewed.key, key)  # a half-done renewal: the key of the next certificate
        assert served_certificate(port, pki["ca"].cert) == pki["server"].certificate
        assert any("new TLS files refused" in r.message for r in caplog.records)
        shutil.copy(renewed.cert, cert)
        assert served_certificate(port, pki["ca"].cert) == renewed.certificate
        assert models(port, tls_ca=pki["ca"].cert) == ["digits"]


# Bearer tokens ------------------------------------------------------------------------------------


def call_status(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def raw_calls(port: int, metadata=()):
    """One call of each kind (unary, stream-stream, unknown method, health) without our client."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = stn_pb2_grpc.StnServiceStub(channel)
    unknown = channel.unary_unary("/stn.v1.StnService/NoSuchMethod")
    health_stub = health_pb2_grpc.HealthStub(channel)
    return channel, {
        "unary": lambda: stub.ListModels(stn_pb2.ListModelsRequest(), metadata=metadata, timeout=5),
        "stream": lambda: list(
            stub.PredictStream(
                iter([stn_pb2.PredictRequest(model="m")]), metadata=metadata, timeout=5
            )
        ),
        "unknown": lambda: unknown(b"", metadata=metadata, timeout=5),
        "health": lambda: health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5),
    }


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", TOKEN),),
        (("authorization", f"Bearer {TOKEN}x"),),
        (("authorization", "Basic abc"),),
    ],
    ids=["none", "wrong", "no-scheme", "longer", "other-scheme"],
)
def test_calls_without_the_right_token_are_unauthenticated_but_health_is_open(metadata):
    with serving(interceptors=[TokenAuthInterceptor(TOKEN)]) as (port, _):
        channel, calls = raw_calls(port, metadata)
        with channel:
            statuses = {kind: call_status(call) for kind, call in calls.items()}
    assert statuses == {
        "unary": grpc.StatusCode.UNAUTHENTICATED,
        "stream": grpc.StatusCode.UNAUTHENTICATED,
        "unknown": grpc.StatusCode.UNAUTHENTICATED,  # no method list for strangers
        "health": grpc.StatusCode.OK,
    }


def test_the_right_token_is_let_through(pki):
    credentials = server_credentials(pki["server"].cert, pki["server"].key)
    with serving(credentials, interceptors=[TokenAuthInterceptor(TOKEN)]) as (port, _):
        assert models(port, tls_ca=pki["ca"].cert, token=TOKEN) == ["digits"]
        with Client(f"localhost:{port}", tls_ca=pki["ca"].cert, token=TOKEN) as client:
            assert [p for p in client.predict_stream([])] == []
        client = triton(port, ssl=True, root_certificates=str(pki["ca"].cert))
        assert client.is_server_live(headers={"authorization": f"bearer {TOKEN}"})
        with pytest.raises(Exception, match="Unauthenticated|UNAUTHENTICATED"):
            client.is_server_live()
        with pytest.raises(StnServeError, match="UNAUTHENTICATED: missing or wrong bearer token"):
            models(port, tls_ca=pki["ca"].cert, token="wrong")


class AsyncModels(stn_pb2_grpc.StnServiceServicer):
    async def ListModels(self, request, context):
        return stn_pb2.ListModelsResponse(models=[stn_pb2.ModelDescription(name="digits")])

    async def PredictStream(self, request_iterator, context):
        async for request in request_iterator:
            yield stn_pb2.PredictResponse(model=request.model)


def test_the_asyncio_interceptor_checks_the_same_way():
    from grpc_health.v1.health import aio as health_aio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        server = grpc.aio.server(interceptors=[AsyncTokenAuthInterceptor(TOKEN)])
        stn_pb2_grpc.add_StnServiceServicer_to_server(AsyncModels(), server)
        health_servicer = health_aio.HealthServicer()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        authorized = (("authorization", f"Bearer {TOKEN}"),)
        for metadata, expected in (((), "UNAUTHENTICATED"), (authorized, "OK")):
            channel, calls = raw_calls(port, metadata)
            with channel:
                statuses = {kind: call_status(call).name for kind, call in calls.items()}
            assert statuses == {
                "unary": expected,
                "stream": expected,
                "unknown": "UNIMPLEMENTED" if metadata else "UNAUTHENTICATED",
                "health": "OK",
            }
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "must hold one token"),
        (b"two words", "printable ASCII without spaces"),
        (b"\xc3\xa9t\xc3\xa9", "printable ASCII"),
        (b"x" * 5000, "1 to 4096 bytes"),
    ],
)
def test_bad_token_files_are_refused(tmp_path, content, message):
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        read_token(path)


def test_a_token_file_reads_without_its_newline(tmp_path):
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    assert read_token(tmp_path / "token") == TOKEN
    with pytest.raises(InvalidInputError, match="cannot read the token file"):
        read_token(tmp_path / "absent")


# The plaintext health port ------------------------------------------------------------------------


def test_the_health_port_answers_checks_in_plaintext_beside_a_tls_port(pki):
    credentials = server_credentials(pki["server"].cert, pki["server"].key)
    with serving(credentials) as (_, health_servicer):
        health_server, health_port = create_health_server(health_servicer, "127.0.0.1:0")
        health_server.start()
        try:
            address = f"127.0.0.1:{health_port}"
            assert check(address) == "SERVING"
            health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            assert check(address) == "NOT_SERVING"  # one servicer, one answer on both ports
            with grpc.insecure_channel(address) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert call_status(lambda: next(watch)) == grpc.StatusCode.UNIMPLEMENTED
                listing = stn_pb2_grpc.StnServiceStub(channel).ListModels
                assert call_status(lambda: listing(stn_pb2.ListModelsRequest(), timeout=5)) == (
                    grpc.StatusCode.UNIMPLEMENTED
                )
        finally:
            health_server.stop(None)


def test_the_health_port_names_an_address_it_cannot_bind():
    with pytest.raises(InvalidInputError, match="cannot bind the health port"):
        create_health_server(health.HealthServicer(), "256.0.0.1:0")


def test_client_certificate_needs_its_key(pki):
    with pytest.raises(InvalidInputError, match="give both tls_cert and tls_key"):
        Client("localhost:1", tls_cert=pki["client"].cert)
    with pytest.raises(InvalidInputError, match="cannot read the CA file"):
        Client("localhost:1", tls_ca=pki["folder"] / "absent.crt")


def test_predict_and_batch_flags_reach_the_client(pki, tmp_path):
    from stn_serve.cli import build_parser
    from stn_serve.commands.connection import remote_predictor

    (tmp_path / "token").write_text(TOKEN + "\n")
    credentials = server_credentials(pki["server"].cert, pki["server"].key, pki["ca"].cert)
    with serving(credentials, interceptors=[TokenAuthInterceptor(TOKEN)]) as (port, _):
        client = pki["client"]
        flags = [
            "--server",
            f"localhost:{port}",
            "--tls-ca",
            str(pki["ca"].cert),
            "--tls-cert",
            str(client.cert),
            "--tls-key",
            str(client.key),
            "--auth-token-file",
            str(tmp_path / "token"),
        ]
        for command in (["predict", *flags, "a.png"], ["batch", "images/", "--out", "o", *flags]):
            with remote_predictor(build_parser().parse_args(command)) as predictor:
                assert [m.name for m in predictor.client.list_models()] == ["digits"]
