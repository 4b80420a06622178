"""Checking the PEM files a server's TLS needs, with Python's `ssl` module alone (no gRPC), so
that the command line refuses a bad file once, with what is wrong, before any server process
starts (`serve --processes` supervises without loading gRPC)."""

from __future__ import annotations

import ssl
from pathlib import Path

from stn_serve.errors import InvalidInputError


class _EncryptedKey(Exception):
    """Raised by the password callback: the key needs a passphrase the server does not have."""


def _no_passphrase():
    raise _EncryptedKey


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read the {what} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise InvalidInputError(f"the {what} {path} is not PEM (no '-----BEGIN ...' block)")
    return data


def check_certificate_files(cert: Path, key: Path, client_ca: Path | None = None) -> None:
    """Raise InvalidInputError naming the file and the problem unless `cert` is a PEM
    certificate chain, `key` its unencrypted private key, and `client_ca` (if given) holds CA
    certificates."""
    _read_pem(cert, "TLS certificate")
    _read_pem(key, "TLS private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise InvalidInputError(
            f"the TLS private key {key} is encrypted; give the server an unencrypted key"
        ) from None
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error):
            raise InvalidInputError(
                f"the TLS private key {key} does not belong to the certificate {cert}"
            ) from None
        raise InvalidInputError(
            f"cannot use the TLS certificate {cert} with the key {key}: {error.reason or error}"
        ) from None
    if client_ca is not None:
        _read_pem(client_ca, "client CA file")
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as error:
            raise InvalidInputError(
                f"the client CA file {client_ca} holds no usable CA certificate: "
                f"{error.reason or error}"
            ) from None
