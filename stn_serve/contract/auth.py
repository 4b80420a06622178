"""Bearer tokens, as the server checks them and clients send them: one token in a file, sent as
the `authorization: Bearer <token>` call header."""

from __future__ import annotations

from pathlib import Path

from stn_serve.errors import InvalidInputError

#: The call header (gRPC metadata key, lower case) and its scheme.
AUTHORIZATION = "authorization"
BEARER = "Bearer"
# A token file holds one line; anything far larger is not a token file.
_MAX_TOKEN_BYTES = 4096


def read_token(path: str | Path) -> str:
    """The token in the file at `path` (surrounding whitespace, such as a final newline, dropped).

    Raises:
        InvalidInputError: unreadable, empty, over 4096 bytes, or not printable ASCII without
            spaces (it travels in an HTTP/2 header).
    """
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_TOKEN_BYTES + 1)
    except OSError as error:
        raise InvalidInputError(f"cannot read the token file {path}: {error.strerror}") from None
    token = data.strip()
    if not token or len(data) > _MAX_TOKEN_BYTES:
        raise InvalidInputError(
            f"the token file {path} must hold one token of 1 to {_MAX_TOKEN_BYTES} bytes"
        )
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise InvalidInputError(
            f"the token in {path} must be printable ASCII without spaces (it is sent as a header)"
        )
    return token.decode()


def authorization_value(token: str) -> str:
    """The header value a client sends for `token`."""
    return f"{BEARER} {token}"
