"""The TMR upstream role (`[tmr] role = "upstream"`, docs/tmr.md): this runtime holds one
constituent container of a TMR system and shows its TMR items to the system's front ends,
and to nobody else.

A front end proves itself with a client certificate signed by the CA the administrator
configured (`[tmr] front_end_ca`): the network listener asks every peer for one
(`accept_front_ends`) and `op_items` answers only a connection whose certificate verified.
The items go out as the vendor signed them, with the upstream's verdict on each
(`licentia.core.evaluate.evaluate(..., tmr_upstream=True)`); the front end compares the
three upstreams' answers and keeps the seats in etcd. A program or an ordinary client
runtime asking the upstream itself gets no TMR item: `access` refuses them with 130 (the
core's rule for a constituent outside a TMR upstream's report), `tmr.items` with 1450."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any, Protocol

from licentia.core.evaluate import evaluate
from licentia.model import ErrorCode, ItemRequest, LicentiaError
from licentia.protocol.frames import Message
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.proofs import make_proof
from licentia.runtime.tokens import RuntimeContainers

__all__ = ["TmrUpstream", "accept_front_ends", "front_end_of"]


class UpstreamHost(Protocol):
    config: RuntimeConfig
    containers: RuntimeContainers


def accept_front_ends(ctx: ssl.SSLContext, ca_file: Path) -> ssl.SSLContext:
    """Ask every TLS peer of the network listener for a client certificate, verified
    against `ca_file`; a peer without one still connects (client runtimes, programs) but
    is no front end."""
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                            f"cannot read the TMR front ends' CA {ca_file}: {exc}",
                            "[tmr] front_end_ca names the PEM file of the CA that signed the front ends' certificates"
                            ) from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def front_end_of(conn: Any) -> str | None:
    """The subject of the verified client certificate of `conn`, or None."""
    transport = getattr(conn, "transport", None)
    if transport is None or getattr(conn, "listener", "") != "network":
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return "front end"


class TmrUpstream:
    def __init__(self, rt: UpstreamHost) -> None:
        self.rt = rt

    def op_items(self, conn: Any, msg: Message) -> Message:
        _front_end_only(conn)
        now = int(time.time())
        request = ItemRequest()
        items: list[dict[str, Any]] = []
        for serial, ld in sorted(self.rt.containers.loaded.items()):
            content = ld.content
            for firm_code, firm in sorted(content.firms.items()):
                for item_id, entry in sorted(firm.items.items()):
                    item = entry.item
                    if item.tmr_id is None:
                        continue
                    verdict = evaluate(item, entry.state, request, content.clock, now, tmr_upstream=True)
                    items.append({
                        "container": serial, "firm": firm_code, "firm_key": firm.firm_public_key,
                        "item": item_id, "product": item.product_code, "tmr_id": item.tmr_id,
                        "license": entry.license, "units": entry.state.units_remaining,
                        "error": None if verdict.error is None else int(verdict.error),
                        "reason": verdict.reason if verdict.error is not None else "",
                    })
        return {"id": msg["id"], "ok": True, "items": items, "at": now}

    def op_prove(self, conn: Any, msg: Message) -> Message:
        """The constituent's signature over a program's challenge for a grant the front end
        made (`licentia.sdk.proof`): with its license and container key, the program checks
        that a container holding the firm's TMR license vouches for the answer."""
        _front_end_only(conn)
        firm, tmr_id = msg["firm"], msg["tmr_id"]
        for serial, ld in sorted(self.rt.containers.loaded.items()):
            entry_firm = ld.content.firms.get(firm)
            if entry_firm is None or not ld.content.sign_key:
                continue
            for item_id, entry in sorted(entry_firm.items.items()):
                if entry.item.tmr_id == tmr_id:
                    units, until = msg.get("units"), msg.get("valid_until")
                    proof = make_proof(ld.content, msg["nonce"], msg["handle"], firm, item_id, units, until)
                    return {"id": msg["id"], "ok": True, "license": entry.license, "container": serial,
                            "item": item_id, "container_key": ld.public_key, "proof": proof}
        raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no constituent of TMR license {tmr_id} (firm {firm}) here")


def _front_end_only(conn: Any) -> None:
    if front_end_of(conn) is None:
        raise LicentiaError(ErrorCode.TMR_FRONT_END_ONLY,
                            "this TMR upstream shows its constituents to its front ends only "
                            "(a TLS client certificate from its [tmr] front_end_ca)")
