"""Central's REST API as its callers read it: the JSON of a success, or the LicentiaError
central raised (same code, message and hint). Shared by the command line's client and the
runtime's sync; neither the HTTP library nor the transport matters here.

Central serves HTTPS with a certificate it made itself, or one the vendor gave it. Callers
trust it as the runtime's clients trust a network server (`licentia.protocol.tls`): by a pin
given up front, by a CA file, or by the pin stored at the first connection in
`PINS/central_HOST_PORT.pin` (trust on first use). `central_context` makes that context;
a plain `http://` URL gets none (only for a TLS proxy in front of central, or a test).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from licentia.model.errors import ErrorCode, LicentiaError
from licentia.protocol.tls import client_context


class Response(Protocol):
    """What is read of an HTTP response (an httpx.Response is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def is_success(self) -> bool: ...

    def json(self) -> Any: ...


def central_pin_file(pins: Path, url: str) -> Path:
    """Where the pin of central at `url` is stored: one file per host and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.hostname or ''}_{port}").strip("_")
    return pins / f"central_{safe}.pin"


def central_context(url: str, pins: Path, *, fingerprint: str | None = None,
                    ca_file: str | None = None) -> ssl.SSLContext | None:
    """The TLS context to reach central at `url` (None for http://).

    With a fingerprint or a CA file, that is the trust; otherwise the certificate central
    shows at the first connection is pinned in `central_pin_file(pins, url)`."""
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{url!r} is not an http:// or https:// URL of central")
    if scheme == "http":
        if fingerprint or ca_file:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                f"a certificate pin or CA file needs an https:// URL; {url} is plain HTTP")
        return None
    if fingerprint or ca_file:
        return client_context(fingerprint=fingerprint, ca_file=ca_file)
    return client_context(pin_file=central_pin_file(pins, url))


def unreachable(url: str, exc: BaseException, hint: str) -> LicentiaError:
    """The refusal for a call that got no answer at all; a certificate that is not the
    trusted one is a security problem, not a network fault."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return LicentiaError(
                ErrorCode.SECURITY_PROBLEM, f"central at {url} is not trusted: {cause}",
                "if central's certificate was replaced on purpose, remove or update its pin file; "
                "otherwise another server may be answering in its place")
        cause = cause.__cause__ or cause.__context__
    return LicentiaError(ErrorCode.NETWORK_FAULT, f"central at {url} cannot be reached: {exc}", hint)


def read_reply(response: Response) -> Any:
    """The JSON body of a successful answer; otherwise raise what central said."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        try:
            code = ErrorCode(error["code"])
        except ValueError:
            code = ErrorCode.CENTRAL_ERROR
        raise LicentiaError(code, str(error.get("message", "")), error.get("hint") or None)
    raise LicentiaError(ErrorCode.CENTRAL_ERROR, f"central answered HTTP {response.status_code}")
