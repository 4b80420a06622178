"""Transport security on the server (`create_server` on 127.0.0.1 port 0): TLS and mutual TLS
with our client and Triton's, certificate files checked and reloaded, bearer tokens, the
plaintext health-only port, and reflection turned off."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import threading
import time

import grpc
import pytest
from certificates import issue, make_ca
from conftest import running_server
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stn_serve._proto.stn.v1 import stn_pb2, stn_pb2_grpc
from stn_serve.client import Client
from stn_serve.client.healthcheck import check
from stn_serve.client.healthcheck import main as healthcheck_main
from stn_serve.contract.auth import read_token
from stn_serve.errors import InvalidInputError, NotReadyError, StnServeError
from stn_serve.runtime import ModelRepository, RuntimeOptions
from stn_serve.server.security import server_credentials
from stn_serve.server.tls_files import check_certificate_files

TOKEN = "s3cret-token-0123456789abcdef"


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


@pytest.fixture(scope="module")
def repository(model_repository):
    """The test models, loaded once for the module (each server leaves them loaded)."""
    loaded = ModelRepository(model_repository, RuntimeOptions(device="cpu")).load()
    yield loaded
    loaded.unload()


def tls_options(issued, client_ca=None) -> dict:
    """Server options that serve TLS with `issued`'s certificate (mutual with `client_ca`)."""
    return {
        "tls_cert": str(issued.cert),
        "tls_key": str(issued.key),
        "tls_client_ca": str(client_ca) if client_ca else None,
    }


@contextlib.contextmanager
def serving(repository, **options):
    """The server on 127.0.0.1 port 0 with `options` (ServerOptions fields): (port, server)."""
    with running_server(repository, **options) as (server, port):
        yield port, server


def models(port: int, **security) -> list[str]:
    """The names our client lists (stn.v1 ListModels)."""
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


def test_tls_works_with_our_client_and_tritonclient(pki, repository):
    with serving(repository, **tls_options(pki["server"])) as (port, _):
        assert models(port, tls_ca=pki["ca"].cert) == ["digits"]
        assert triton(port, ssl=True, root_certificates=str(pki["ca"].cert)).is_server_live()
        assert check(f"localhost:{port}", tls_ca=pki["ca"].cert) == "SERVING"


def test_a_plaintext_client_is_refused(pki, repository):
    with serving(repository, **tls_options(pki["server"])) as (port, _):
        with pytest.raises(NotReadyError, match="UNAVAILABLE"):
            models(port)
        assert check(f"localhost:{port}", timeout=2) == "UNAVAILABLE"
        assert models(port, tls_ca=pki["ca"].cert) == ["digits"]  # still serving


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(pki, repository):
    with serving(repository, **tls_options(pki["server"])) as (port, _):
        with pytest.raises(NotReadyError):
            models(port, tls_ca=pki["other_ca"].cert)
        with pytest.raises(NotReadyError):
            models(port, tls=True)  # the system's CAs do not know this one either


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki, repository):
    server, client, stranger = pki["server"], pki["client"], pki["stranger"]
    with serving(repository, **tls_options(server, pki["ca"].cert)) as (port, _):
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


def test_the_health_check_command_speaks_tls(pki, capsys, repository):
    with serving(repository, **tls_options(pki["server"])) as (port, _):
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
    # The server refuses them before it loads any model: this folder does not exist.
    with pytest.raises(InvalidInputError, match=message):
        with serving(tmp_path / "never-read", tls_cert=cert, tls_key=key, tls_client_ca=ca):
            pass


def test_renewed_certificate_files_are_served_to_new_connections(pki, tmp_path, caplog, repository):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    with serving(repository, tls_cert=str(cert), tls_key=str(key)) as (port, _):
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
        "stream": lambda: list(stub.PredictStream(iter([]), metadata=metadata, timeout=5)),
        "unknown": lambda: unknown(b"", metadata=metadata, timeout=5),
        "health": lambda: health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5),
    }


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture(scope="module")
def token_server(repository, token_file) -> int:
    """A plaintext server that takes calls with the token only: its port."""
    with serving(repository, auth_token_file=token_file) as (port, _):
        yield port


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
def test_calls_without_the_right_token_are_unauthenticated_but_health_is_open(
    metadata, token_server
):
    channel, calls = raw_calls(token_server, metadata)
    with channel:
        statuses = {kind: call_status(call) for kind, call in calls.items()}
    assert statuses == {
        "unary": grpc.StatusCode.UNAUTHENTICATED,
        "stream": grpc.StatusCode.UNAUTHENTICATED,
        "unknown": grpc.StatusCode.UNAUTHENTICATED,  # no method list for strangers
        "health": grpc.StatusCode.OK,
    }


def test_the_right_token_is_let_through(token_server):
    channel, calls = raw_calls(token_server, (("authorization", f"Bearer {TOKEN}"),))
    with channel:
        statuses = {kind: call_status(call).name for kind, call in calls.items()}
    assert statuses == {"unary": "OK", "stream": "OK", "unknown": "UNIMPLEMENTED", "health": "OK"}


def test_the_token_over_tls_with_our_client_and_tritonclient(pki, repository, token_file):
    with serving(repository, **tls_options(pki["server"]), auth_token_file=token_file) as (
        port,
        _,
    ):
        assert models(port, tls_ca=pki["ca"].cert, token=TOKEN) == ["digits"]
        with Client(f"localhost:{port}", tls_ca=pki["ca"].cert, token=TOKEN) as client:
            assert [p for p in client.predict_stream([])] == []
        client = triton(port, ssl=True, root_certificates=str(pki["ca"].cert))
        assert client.is_server_live(headers={"authorization": f"bearer {TOKEN}"})
        index = client.get_model_repository_index(headers={"authorization": f"Bearer {TOKEN}"})
        assert {m.name for m in index.models} == {"digits"}
        with pytest.raises(Exception, match="Unauthenticated|UNAUTHENTICATED"):
            client.is_server_live()
        with pytest.raises(StnServeError, match="UNAUTHENTICATED: missing or wrong bearer token"):
            models(port, tls_ca=pki["ca"].cert, token="wrong")
        assert check(f"localhost:{port}", tls_ca=pki["ca"].cert) == "SERVING"  # probes: open


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


def test_the_health_port_answers_checks_in_plaintext_beside_a_tls_port(pki, repository, token_file):
    options = {**tls_options(pki["server"]), "auth_token_file": token_file}
    with serving(repository, **options, health_port=0, drain_delay_s=3) as (_, server):
        address = f"127.0.0.1:{server.health_port}"
        assert check(address) == "SERVING" and check(address, "digits") == "SERVING"
        with grpc.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert call_status(lambda: next(watch)) == grpc.StatusCode.UNIMPLEMENTED
            listing = stn_pb2_grpc.StnServiceStub(channel).ListModels
            assert call_status(lambda: listing(stn_pb2.ListModelsRequest(), timeout=5)) == (
                grpc.StatusCode.UNIMPLEMENTED
            )
        # Draining: one health servicer answers on both ports, NOT_SERVING during the delay.
        draining = threading.Thread(target=server.drain)
        draining.start()
        try:
            deadline = time.monotonic() + 3
            while check(address) != "NOT_SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert check(address) == "NOT_SERVING"
        finally:
            draining.join(30)


def test_the_health_port_names_an_address_it_cannot_bind(repository):
    with pytest.raises(InvalidInputError, match="cannot bind the health port 256.0.0.1:0"):
        with serving(repository, health_port=0, health_host="256.0.0.1"):
            pass


# Reflection ---------------------------------------------------------------------------------------


def reflected_services(port: int) -> list[str] | grpc.StatusCode:
    """The services reflection lists, or the status code it answers with."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            (response,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
        except grpc.RpcError as error:
            return error.code()
    return sorted(service.name for service in response.list_services_response.service)


def test_reflection_lists_the_services_unless_turned_off(repository):
    with serving(repository) as (port, _):
        assert "stn.v1.StnService" in reflected_services(port)
    with serving(repository, reflection=False) as (port, _):
        assert reflected_services(port) == grpc.StatusCode.UNIMPLEMENTED


def test_client_certificate_needs_its_key(pki):
    with pytest.raises(InvalidInputError, match="give both tls_cert and tls_key"):
        Client("localhost:1", tls_cert=pki["client"].cert)
    with pytest.raises(InvalidInputError, match="cannot read the CA file"):
        Client("localhost:1", tls_ca=pki["folder"] / "absent.crt")


def test_predict_and_batch_flags_reach_the_client(pki, tmp_path, repository):
    from stn_serve.cli import build_parser
    from stn_serve.commands.connection import remote_predictor

    (tmp_path / "token").write_text(TOKEN + "\n")
    options = tls_options(pki["server"], pki["ca"].cert)
    with serving(repository, **options, auth_token_file=str(tmp_path / "token")) as (port, _):
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
