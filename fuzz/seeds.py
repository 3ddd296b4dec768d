"""Valid inputs of each target, made by the real encoders, to start the fuzzers from (and
for the hypothesis versions to mutate). Each seed carries the target's mode byte."""

from __future__ import annotations

import functools
import json

import msgpack

from fuzz import targets
from licentia.core import blacklist as bl, updates
from licentia.core.blacklist import BlacklistEntry
from licentia.model import ContainerSerial, ProductItem, envelope as env
from licentia.protocol.frames import encode
from licentia.protocol.messages import request

T0 = targets.T0


def _body(blob: bytes, prefix: int) -> bytes:
    """The body of a signed artifact, after its fixed prefix (what the re-signing modes take)."""
    from licentia.crypto.artifacts import split_signed

    _, body, _, _ = split_signed(blob, blob[:4], {1}, what="seed")
    return body[prefix:]


@functools.cache
def seeds() -> dict[str, list[bytes]]:
    content, firm_private, _ = targets._keys()
    req = updates.make_request(content, targets.FIRM_CODE, T0, {"hostname": "fuzz"})
    parsed = updates.read_request(req)
    update = updates.issue_update(parsed, targets.FIRM_CODE, firm_private,
                                  [updates.PutItem(1, ProductItem(42, quantity=3, feature_map=1))], T0)
    applied = updates.apply_update(content, update, T0 + 1, in_vm=False)
    ops = [{"op": "remove", "item_id": 1}, {"op": "lock"}, {"op": "text", "text": "hello"}]
    listed = bl.make_blacklist(targets.FIRM_CODE, [BlacklistEntry(ContainerSerial(130, 4242), T0, "stolen")],
                               firm_private, T0)
    frames = b"".join(encode(m) for m in (
        request(1, "hello", versions=[1], client="fuzz"),
        request(2, "access", firm_code=10001, product_code=7, pid=1, pid_start=1),
        request(3, "keepalive", handles=[1, 2]),
        request(4, "release", handle=1),
    ))
    from licentia.containers.pkcs11 import KeyKind
    from licentia.vault.package import Package, Request as VaultRequest

    package = Package("1234", b"k" * 32, b"p" * 65, next(iter(KeyKind)), "label", b"cert", b"ca", b"wrapped").encode(b"s" * 64)
    vault_request = VaultRequest("label", "1234", b"spki").encode()
    return {
        "frames": [b"\x07" + frames, b"\x00" + frames],
        "request_validation": [msgpack.packb(request(2, "access", firm_code=1, product_code=2, pid=3, pid_start=4))],
        "container_file": [b"\x01" + env.encode(content.to_dict())],
        "request_file": [b"\x00" + req, b"\x01" + _body(req, 32)],
        "update_file": [b"\x00" + update, b"\x01" + _body(update, updates._UPDATE_PREFIX.size),
                        b"\x02" + env.encode(ops)],
        "receipt_file": [b"\x00" + applied.receipt, b"\x01" + _body(applied.receipt, 32)],
        "blacklist_file": [b"\x00" + listed, b"\x01" + _body(listed, 0)],
        "vault_package": [b"\x00" + package, b"\x01" + vault_request],
        "central_json": [json.dumps({"serial": "140-1", "secret": "s", "lines": [{"product_code": 1}]}).encode()],
        "central_request": [bytes([i]) + json.dumps(body).encode() for i, body in enumerate([
            {"request": "AAAA"}, {"request": "AAAA", "licenses": [1]}, {"old_serial": "130-1", "same_device": True},
            {"receipt": "AAAA"}, {"request": "AAAA"}, {"serial": "140-1", "secret": "x"},
            {"serial": "140-1", "secret": "x", "product_code": 1, "station": "s"},
            {"serial": "140-1", "secret": "x", "handle": "h"}, {"serial": "140-1", "secret": "x", "handle": "h"},
            {"product_code": 42, "name": "CAD", "template": {"feature_map": 3}},
            {"company": "A", "site": "B", "license_type": "single-user"},
            {"lines": [{"product_code": 42, "quantity": 2}]}, {"reason": "stolen"}, {"note": "ok"},
            {"reason": "no"}, {"name": "t", "role": "operator"}, {"license_type": "multi-user"},
        ])],
    }
