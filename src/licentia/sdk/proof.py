"""What the container signs for a program, and the identity of the program's station.

Shared by the runtime (which signs) and the SDK (which verifies); cheap to import.

A proof is the container's Ed25519 signature over

    msgpack [PROOF_DOMAIN, nonce, handle, serial, firm code, item id, units, valid until]

`nonce` is the program's fresh random challenge, so an answer recorded once cannot be
replayed; the container key is the one the vendor-signed license names, so only the
container the vendor licensed can make it.

A program that sends its ephemeral X25519 key (`kx`) with the challenge gets, the first
time on a connection for a container, the signature over the same fields followed by both
ephemeral keys (PROOF_DOMAIN_KX), with the runtime's ephemeral key; both sides then derive
the proof key HKDF-SHA256(X25519 secret, `proof_key_info`), and later answers on that
connection for that container carry `mac` = HMAC-SHA256(proof key, `proof_message(...)`)
instead of a signature (docs/protocol.md, "Proofs").
"""

from __future__ import annotations

import os

from licentia.protocol.frames import packb

TYPE_CHECKING = False  # typing is not imported at run time: a protected program pays for it at start
if TYPE_CHECKING:
    from typing import Any

PROOF_DOMAIN = "licentia access proof v1"
PROOF_DOMAIN_KX = "licentia access proof v2"  # the signature that also binds both exchange keys
PROOF_KEY_DOMAIN = b"licentia proof key v1"
NONCE_SIZE = 32
KX_SIZE = 32  # an X25519 public key

# Environment variables that tell which kind of session a program runs in; the program
# passes them to its runtime, which judges them (licentia.binding.detect_session).
SESSION_VARIABLES = (
    "LICENTIA_SESSION", "LICENTIA_SESSION_ID", "XDG_SESSION_ID", "DISPLAY", "SSH_CONNECTION",
    "SSH_CLIENT", "SSH_TTY", "SESSIONNAME", "XRDP_SESSION", "X2GO_SESSION", "TLSESSIONDATA",
    "NXSESSIONID",
)


def proof_message(
    nonce: bytes, handle: int, serial: str, firm: int, item_id: int, units: int | None, valid_until: int | None
) -> bytes:
    packed: bytes = packb([PROOF_DOMAIN, nonce, handle, serial, firm, item_id, units, valid_until])
    return packed


def proof_message_kx(
    nonce: bytes, handle: int, serial: str, firm: int, item_id: int, units: int | None, valid_until: int | None,
    program_kx: bytes, runtime_kx: bytes,
) -> bytes:
    """What the container signs to open a proof key: the fields of `proof_message` and the
    program's and the runtime's ephemeral X25519 public keys."""
    packed: bytes = packb(
        [PROOF_DOMAIN_KX, nonce, handle, serial, firm, item_id, units, valid_until, program_kx, runtime_kx])
    return packed


def proof_key_info(program_kx: bytes, runtime_kx: bytes, serial: str) -> bytes:
    """HKDF's `info` for the proof key of one container on one connection: the domain, both
    ephemeral public keys (fixed size) and the container serial."""
    return PROOF_KEY_DOMAIN + program_kx + runtime_kx + serial.encode()


def station_host_id(root: str | os.PathLike[str] | None = None) -> str:
    """A stable, non-revealing name for this machine: a digest of its machine id (or host name)."""
    import hashlib

    base = "/" if root is None else os.fspath(root)
    raw = b""
    for rel in ("etc/machine-id", "var/lib/dbus/machine-id"):
        try:
            with open(os.path.join(base, rel), "rb") as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw:
            break
    if not raw:
        import socket

        raw = b"host:" + socket.gethostname().encode()
    return hashlib.sha256(b"licentia station\x00" + raw).hexdigest()[:16]


def session_environment(environ: Any = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: env[k] for k in SESSION_VARIABLES if env.get(k)}
