"""Where a client of the runtime's protocol connects (`Endpoint`, `parse_address`) and the
error a failed connection raises (`connect_error`): shared by `client` and `aio`."""

from __future__ import annotations

from licentia.model.errors import ErrorCode, LicentiaError
from licentia.protocol.messages import DEFAULT_PORT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _EndpointFields(NamedTuple):
        path: str | None = None
        host: str = ""
        port: int = DEFAULT_PORT
else:
    from collections import namedtuple  # loaded already (enum needs it); typing is not

    _EndpointFields = namedtuple("Endpoint", ("path", "host", "port"), defaults=(None, "", DEFAULT_PORT))

DEFAULT_TIMEOUT = 10.0


class Endpoint(_EndpointFields):
    """Where a client connects: a Unix socket path, or a host and port
    (a named tuple: `path`, `host`, `port`)."""

    __slots__ = ()

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(address: str | tuple[str, int] | Endpoint) -> Endpoint:
    """`/path`, `unix:/path`, `host`, `host:port`, `[v6]:port` or `(host, port)`."""
    if isinstance(address, Endpoint):
        return address
    if isinstance(address, tuple):
        host, port = address
        return Endpoint(None, host, _port(port, address))
    if not isinstance(address, str) or not address:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{address!r} is not a server address")
    if address.startswith("unix:"):
        return Endpoint(address[5:])
    if address.startswith(("/", "./", "../")):
        return Endpoint(address)
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{address!r} is not a server address")
        return Endpoint(None, host, _port(rest[1:], address) if rest else DEFAULT_PORT)
    host, sep, port_text = address.rpartition(":")
    if not sep:
        return Endpoint(None, address, DEFAULT_PORT)
    if ":" in host:  # a bare IPv6 address
        return Endpoint(None, address, DEFAULT_PORT)
    return Endpoint(None, host, _port(port_text, address))


def _port(value: object, address: object) -> int:
    port = -1
    if isinstance(value, int | str):
        try:
            port = int(value)
        except ValueError:
            port = -1
    if isinstance(value, bool) or not 0 < port < 65536:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{address!r} has no valid port")
    return port


def connect_error(endpoint: Endpoint, exc: BaseException, *, handshake: bool = False,
                  server_gone: bool = False) -> LicentiaError:
    """The `LicentiaError` for a connection that could not be made; `handshake`:
    the connection was made and its TLS handshake failed. A handshake the server refused
    or whose certificate failed is a security problem (109); one cut short (the connection
    timed out, or closed or reset by a server that no longer accepts connections:
    `server_gone`, see `closed_early`) is a network fault (100)."""
    if handshake and (server_gone or _dropped(exc)):
        return LicentiaError(
            ErrorCode.NETWORK_FAULT,
            f"the connection to {endpoint} dropped during the TLS handshake ({_reason(exc)})",
            "the server closed the connection or stopped; check that it runs, then try again",
        )
    if handshake:
        return LicentiaError(
            ErrorCode.SECURITY_PROBLEM, f"the TLS handshake with {endpoint} failed: {_reason(exc)}"
        )
    if endpoint.path is not None:
        return LicentiaError(ErrorCode.NO_LOCAL_RUNTIME, f"no runtime answers on {endpoint.path} ({_reason(exc)})")
    return LicentiaError(ErrorCode.SERVER_NOT_FOUND, f"no license server answers at {endpoint} ({_reason(exc)})")


def _dropped(exc: BaseException) -> bool:
    """A handshake that timed out: no answer, not a refusal."""
    return isinstance(exc, TimeoutError) and "SSLError" not in {c.__name__ for c in type(exc).__mro__}


def closed_early(exc: BaseException) -> bool:
    """The server closed or reset the connection during the handshake: it refused this TLS
    version (asyncio servers close without an alert), or it stopped. The caller tells
    which by connecting again (`server_gone`). ssl is not imported here: a protected
    program loads this module at start."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"SSLEOFError", "SSLZeroReturnError"}) or isinstance(exc, ConnectionError)


def _reason(exc: BaseException) -> str:
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__
