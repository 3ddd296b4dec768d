"""Client TLS for network mode: TLS 1.3 only, the server trusted by a CA file or pinned.

    ctx = client_context(pin_file="~/.config/licentia/servers/lic1.pin")   # trust on first use
    ctx = client_context(fingerprint="sha256:3f1a...")                      # pinned up front
    ctx = client_context(ca_file="company-ca.pem")                          # a CA the admin runs
    Client("lic1.example.org:22350", ssl_context=ctx)

A pin is the SHA-256 of the server certificate (DER). With `pin_file`, the first
successful handshake writes the server's pin into the file (created exclusively, so
two first connections cannot store two different pins); every later handshake must
present a certificate whose pin is in the file, one pin per line (several lines let
an administrator roll a certificate over). A server that presents another
certificate is refused during the handshake with `ssl.SSLCertVerificationError`,
which `Client` and `AsyncClient` report as `LicentiaError(SECURITY_PROBLEM)`.
`check_pin` tells the same for a socket made elsewhere.

Pins and a CA file combine: both must hold.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

from licentia.model import ErrorCode, LicentiaError

PIN_PREFIX = "sha256:"


def fingerprint(der: bytes) -> str:
    """The pin of a certificate: `sha256:` and 64 lowercase hex digits."""
    return PIN_PREFIX + hashlib.sha256(der).hexdigest()


def parse_pin(text: str) -> str:
    """Normalise a pin written as `sha256:hex`, bare hex, or hex pairs with colons."""
    value = text.strip()
    if value.lower().startswith(PIN_PREFIX):
        value = value[len(PIN_PREFIX) :]
    value = value.replace(":", "").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"{text.strip()!r} is not a certificate pin; expected sha256: and 64 hex digits",
        )
    return PIN_PREFIX + value


class PinnedContext(ssl.SSLContext):
    """An `SSLContext` whose sockets check the server's certificate pin in the handshake."""

    pins: frozenset[str]
    pin_file: Path | None

    def check_peer(self, der: bytes | None) -> None:
        """Accept the certificate `der`, or raise `ssl.SSLCertVerificationError`."""
        if der is None:
            raise ssl.SSLCertVerificationError("the server presented no certificate")
        pin = fingerprint(der)
        pins = set(self.pins)
        if self.pin_file is not None:
            try:
                stored = _read_pins(self.pin_file)
                if stored is None:
                    _store_first_pin(self.pin_file, pin)
                    stored = _read_pins(self.pin_file) or set()
            except LicentiaError as exc:
                raise ssl.SSLCertVerificationError(exc.message) from None
            except OSError as exc:
                raise ssl.SSLCertVerificationError(f"cannot store the pin in {self.pin_file}: {exc}") from None
            pins |= stored
        if pin not in pins:
            raise ssl.SSLCertVerificationError(
                f"the server's certificate {pin} is not the pinned one; another server may be "
                f"answering in its place (if its certificate was replaced on purpose, update the pin"
                f"{' in ' + str(self.pin_file) if self.pin_file else ''})"
            )


class _PinnedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check(self.context, self.getpeercert(binary_form=True))


class _PinnedObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check(self.context, self.getpeercert(binary_form=True))


def _check(context: ssl.SSLContext, der: bytes | None) -> None:
    if isinstance(context, PinnedContext):
        context.check_peer(der)


PinnedContext.sslsocket_class = _PinnedSocket
PinnedContext.sslobject_class = _PinnedObject


def client_context(
    *,
    pin_file: str | os.PathLike[str] | None = None,
    fingerprint: str | list[str] | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts a server by pin, by CA, or by both.

    `check_hostname` applies to CA trust (a pin names one certificate already)."""
    pins = frozenset(parse_pin(p) for p in ([fingerprint] if isinstance(fingerprint, str) else fingerprint or []))
    pinned = pin_file is not None or bool(pins)
    if not pinned and ca_file is None:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, "a TLS client needs a pin file, a fingerprint or a CA file to trust"
        )
    ctx: ssl.SSLContext = PinnedContext(ssl.PROTOCOL_TLS_CLIENT) if pinned else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=os.fspath(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read CA file {ca_file}: {exc}") from None
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin is the check
    if isinstance(ctx, PinnedContext):
        ctx.pins = pins
        ctx.pin_file = Path(pin_file).expanduser() if pin_file is not None else None
        if ctx.pin_file is not None:
            _read_pins(ctx.pin_file)  # a damaged pin file fails now, not at the first connection
    return ctx


def check_pin(sock: ssl.SSLSocket | ssl.SSLObject, pins: list[str]) -> None:
    """Raise `LicentiaError(SECURITY_PROBLEM)` unless the peer's certificate has one of `pins`."""
    der = sock.getpeercert(binary_form=True)
    wanted = {parse_pin(p) for p in pins}
    if der is None or fingerprint(der) not in wanted:
        raise LicentiaError(ErrorCode.SECURITY_PROBLEM, "the server's certificate is not the pinned one")


def _read_pins(path: Path) -> set[str] | None:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LicentiaError(ErrorCode.SECURITY_PROBLEM, f"cannot read pin file {path}: {exc}") from None
    pins = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                pins.add(parse_pin(line))
            except LicentiaError:
                raise LicentiaError(ErrorCode.SECURITY_PROBLEM, f"pin file {path} holds a damaged pin") from None
    if not pins:
        raise LicentiaError(ErrorCode.SECURITY_PROBLEM, f"pin file {path} holds no pin")
    return pins


def _store_first_pin(path: Path, pin: str) -> None:
    """Write `pin` to a new `path`, unless another first connection got there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pin}\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if the file exists: the first writer wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
