"""Fuzz targets: every parser of bytes that come from outside, fed arbitrary bytes.

Each target takes one input (`bytes`) and returns normally when the parser accepted it or
refused it with its documented typed error (`LicentiaError`, of which the protocol's
`ProtocolError` is one). Any other exception escapes: that is a finding. The same functions
run under atheris (`fuzz/run.py`, `make fuzz`) and under hypothesis in the test suite
(`tests/fuzz/`).

Signed artifacts are fuzzed twice: as whole files (a mutation breaks the signature, so this
reaches the framing and the signature check) and "re-signed": the input is the body and the
target signs it with a key the reader trusts, so the field decoding behind the signature is
reached too. The first input byte chooses the mode where a target has several.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from licentia.core import blacklist as bl, updates
from licentia.core.content import ContainerContent
from licentia.core.stored import load_content
from licentia.crypto import new_box_key, new_signing_key, seal_to, signing_public_key
from licentia.crypto.artifacts import sign_artifact, sign_artifact_with
from licentia.model import ContainerSerial, LicentiaError, envelope as env
from licentia.protocol.frames import FrameDecoder, ProtocolError, unpack_body
from licentia.protocol.messages import validate_request

T0 = 1_750_000_000
FIRM_CODE = 6_000_010
Target = Callable[[bytes], None]


@functools.cache
def _keys() -> tuple[ContainerContent, bytes, bytes]:
    """A container (serial 130-…) and a firm's signing key pair, fixed for a run."""
    content = ContainerContent(ContainerSerial(130, 4242), T0, new_signing_key(), new_box_key())
    firm_private = new_signing_key()
    return content, firm_private, signing_public_key(firm_private)


def _mode(data: bytes, modes: int) -> tuple[int, bytes]:
    if not data:
        return 0, b""
    return data[0] % modes, data[1:]


# -- the protocol ---------------------------------------------------------------------------


def frames(data: bytes) -> None:
    """The frame decoder fed in pieces (the first byte sets the piece size), then request
    validation of every message it yields, as a connection does."""
    if not data:
        return
    step = 1 + data[0] % 64
    decoder = FrameDecoder(max_frame=1 << 16)
    stream = data[1:]
    for pos in range(0, len(stream), step):
        try:
            messages = decoder.feed(stream[pos : pos + step])
        except ProtocolError as exc:
            messages = list(exc.messages)
            if exc.fatal:
                _validate_all(messages)
                return
            try:  # go on with the bytes after the bad frame, as the server does
                messages += decoder.feed(b"")
            except ProtocolError as again:
                messages += list(again.messages)
                if again.fatal:
                    _validate_all(messages)
                    return
        _validate_all(messages)


def _validate_all(messages: list[Any]) -> None:
    for msg in messages:
        with contextlib.suppress(ProtocolError):
            validate_request(msg)


def request_validation(data: bytes) -> None:
    """Any body the frame decoder's bounded msgpack decoding yields, straight into
    validate_request (without the frame layer's own check of the id)."""
    try:
        msg = unpack_body(data)
    except Exception:  # not msgpack: nothing to validate
        return
    if isinstance(msg, dict):
        with contextlib.suppress(ProtocolError):
            validate_request(msg)


# -- container files ------------------------------------------------------------------------


def container_file(data: bytes) -> None:
    """A soft container file's header (mode 0), or the state map it seals (mode 1: what a
    container's own key opens, decoded by the same code)."""
    from licentia.containers.soft import parse_header

    mode, rest = _mode(data, 2)
    with contextlib.suppress(LicentiaError):
        if mode == 0:
            parse_header(rest)
        else:
            content, _, _ = _keys()
            load_content(env.decode_map(rest, what="container file"), signing_public_key(content.sign_key))


# -- request, update, receipt, blacklist ------------------------------------------------------


def _container_signed(magic: bytes, body: bytes) -> bytes:
    content, _, _ = _keys()
    keys = content.software_keys()
    return sign_artifact_with(magic, updates.VERSION, keys.sign_public + body, keys.sign)


def request_file(data: bytes) -> None:
    """A request file as sent (mode 0) or its body signed by the container (mode 1)."""
    mode, rest = _mode(data, 2)
    with contextlib.suppress(LicentiaError):
        updates.read_request(rest if mode == 0 else _container_signed(updates.REQUEST_MAGIC, rest))


def receipt_file(data: bytes) -> None:
    """A receipt file as sent (mode 0) or its body signed by the container (mode 1)."""
    mode, rest = _mode(data, 2)
    with contextlib.suppress(LicentiaError):
        updates.read_receipt(rest if mode == 0 else _container_signed(updates.RECEIPT_MAGIC, rest))


def update_file(data: bytes) -> None:
    """An update file applied to a container: as sent (mode 0), its body signed by the firm
    (mode 1), or its operations sealed to the container inside a valid update (mode 2)."""
    content, firm_private, firm_public = _keys()
    mode, rest = _mode(data, 3)
    prefix = updates._UPDATE_PREFIX.pack(FIRM_CODE, content.serial.mask, content.serial.number, firm_public)
    if mode == 0:
        blob = rest
    elif mode == 1:
        blob = sign_artifact(updates.UPDATE_MAGIC, updates.VERSION, prefix + rest, firm_private)
    else:
        sealed = seal_to(content.software_keys().box_public, rest, str(content.serial).encode())
        body = env.encode({"counter_from": 0, "counter_to": 1, "issued_at": T0, "operations": sealed})
        blob = sign_artifact(updates.UPDATE_MAGIC, updates.VERSION, prefix + body, firm_private)
    with contextlib.suppress(LicentiaError):
        updates.peek_update(blob)
        updates.apply_update(content, blob, T0 + 60, in_vm=False)


def blacklist_file(data: bytes) -> None:
    """A blacklist as shipped (mode 0) or its body signed by the firm (mode 1)."""
    _, firm_private, firm_public = _keys()
    mode, rest = _mode(data, 2)
    blob = rest if mode == 0 else sign_artifact(bl.MAGIC, bl.VERSION, rest, firm_private)
    with contextlib.suppress(LicentiaError):
        listed = bl.read_blacklist(blob, firm_public, FIRM_CODE)
        bl.check_blacklist(listed, ContainerSerial(130, 4242), T0)


# -- vault ----------------------------------------------------------------------------------


def vault_package(data: bytes) -> None:
    """A vault package (mode 0) or a vault request (mode 1)."""
    from licentia.vault.package import Request, decode_package

    mode, rest = _mode(data, 2)
    with contextlib.suppress(LicentiaError):
        if mode == 0:
            decode_package(rest)
        else:
            Request.decode(rest)


# -- central's request bodies -----------------------------------------------------------------


def central_json(data: bytes) -> None:
    """The JSON every central endpoint parses its body with."""
    from licentia.central.guard import parse_json

    with contextlib.suppress(LicentiaError):
        parse_json(data)


class CentralFindingError(AssertionError):
    """Central answered a request with a server error."""


@functools.cache
def _central() -> tuple[Any, str, asyncio.AbstractEventLoop]:
    from licentia.central.api import create_app
    from licentia.central.db import Database, sqlite_url
    from licentia.central.service import Central, FirmKey

    directory = Path(tempfile.mkdtemp(prefix="licentia-fuzz-central-"))
    atexit.register(shutil.rmtree, directory, True)
    db = Database(sqlite_url(directory / "central.db"))
    db.migrate()
    _, firm_private, firm_public = _keys()
    central = Central(db, FirmKey(FIRM_CODE, "Fuzz Firm", firm_private, firm_public))
    token = central.ensure_admin_token(T0)
    assert token is not None
    return create_app(central, clock=lambda: T0, max_body=64 * 1024), token, asyncio.new_event_loop()


CENTRAL_POSTS = [
    "/api/tickets/T-AAAAA-AAAAA-AAAAA/activate", "/api/tickets/T-AAAAA-AAAAA-AAAAA/return",
    "/api/tickets/T-AAAAA-AAAAA-AAAAA/replace", "/api/receipts", "/api/sync", "/api/cloud/items",
    "/api/cloud/access", "/api/cloud/heartbeat", "/api/cloud/release", "/api/products", "/api/customers",
    "/api/orders", "/api/containers/130-4242/blacklist", "/api/containers/130-4242/review",
    "/api/replacements/1/refuse", "/api/tokens", "/api/customers/C-AAAAA-AAAAA/license-type",
]


def central_request(data: bytes) -> None:
    """A POST body to one of central's endpoints (the first byte chooses which), through the
    whole application (in process, no socket): any 5xx is a finding."""
    if not data:
        return
    app, token, loop = _central()
    path = CENTRAL_POSTS[data[0] % len(CENTRAL_POSTS)]
    body = data[1:]
    status: list[int] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"central"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1), "server": ("central", 80),
    }
    loop.run_until_complete(app(scope, receive, send))
    if not status or status[0] >= 500:
        raise CentralFindingError(f"POST {path} answered {status}: {body[:200]!r}")


TARGETS: dict[str, Target] = {
    "frames": frames,
    "request_validation": request_validation,
    "container_file": container_file,
    "request_file": request_file,
    "update_file": update_file,
    "receipt_file": receipt_file,
    "blacklist_file": blacklist_file,
    "vault_package": vault_package,
    "central_json": central_json,
    "central_request": central_request,
}
