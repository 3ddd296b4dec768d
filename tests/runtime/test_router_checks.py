"""The router's inline checks of frequent requests agree with the catalogue: a request
reaches its handler exactly when `validate_request` accepts it, whatever the types of the
fields the SDK's proved access carries (mode, nonce, exchange key, serials keyed)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from licentia.core.seats import Holder, Station
from licentia.model import SessionKind
from licentia.protocol.frames import ProtocolError
from licentia.protocol.messages import validate_request
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.ident import Ident
from licentia.runtime.router import Router

scalars = st.none() | st.booleans() | st.integers(min_value=-2, max_value=2**40) | st.text(max_size=12) \
    | st.binary(max_size=33)
any_value = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=6)
modes = st.sampled_from(["per-access", "per-station", "exclusive", "none", "shared", ""]) | any_value
keyed = st.lists(st.text(max_size=12), max_size=3) | st.lists(scalars, min_size=1, max_size=3) | any_value
nonces = st.binary(min_size=32, max_size=32) | any_value
kxs = st.binary(min_size=32, max_size=32) | any_value
ids = st.integers(min_value=1, max_value=2**31) | st.integers(max_value=0) | st.booleans() | st.text(max_size=2)
codes = st.integers(min_value=0, max_value=2**31) | st.booleans() | st.text(max_size=2) | st.none()


class Recorder:
    """A connection as the router sees it, keeping what it was sent."""

    def __init__(self) -> None:
        station = Station("pc-1")
        self.ident: Ident | None = Ident(kind="program", holder=Holder.local(station, 4242, 1.0), station=station,
                                         session=SessionKind.LOCAL, local=True, in_vm=False, pid=4242)
        self.sent: list[Any] = []

    def send(self, reply: Any) -> None:
        self.sent.append(reply)

    def open(self) -> bool:
        return True


@settings(max_examples=400, deadline=None)
@given(rid=ids, firm=codes, product=codes, fields=st.fixed_dictionaries(
    {}, optional={"mode": modes, "nonce": nonces, "kx": kxs, "keyed": keyed}))
def test_an_access_reaches_its_handler_exactly_when_the_catalogue_accepts_it(
        rid: Any, firm: Any, product: Any, fields: dict[str, Any]) -> None:
    msg = {"id": rid, "op": "access", "firm": firm, "product": product, **fields}
    handled: list[dict[str, Any]] = []

    def handler(conn: Any, m: dict[str, Any]) -> dict[str, Any]:
        handled.append(m)
        return {"id": m["id"], "ok": True}

    router = Router({"access": handler}, note_problem=lambda text: None, spawn=lambda aw: None,
                    config=RuntimeConfig())
    conn = Recorder()
    router.dispatch(conn, msg)
    try:
        accepted = validate_request(msg) == "access"
    except ProtocolError:
        accepted = False
    assert bool(handled) == accepted, (msg, conn.sent)
    if not accepted:
        assert len(conn.sent) == 1 and conn.sent[0]["ok"] is False
