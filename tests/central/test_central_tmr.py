"""TMR products in central, against real SQLite and real PostgreSQL: a ticket's TMR license
is activated by a group request into three constituent containers (run by the real core),
answered by a group update naming them, under the firm's next TMR id, and confirmed by a
group receipt; single requests for TMR licenses and group requests for ordinary ones are
refused with their codes."""

from __future__ import annotations

import base64
import threading
import warnings
from typing import Any

import pytest
from central_helpers import T0, Box

from licentia.central.api import create_app
from licentia.central.service import Central
from licentia.central.tmr import TmrProducts
from licentia.core import tmrgroup
from licentia.model import ErrorCode, LicentiaError

with warnings.catch_warnings():  # starlette's note about its httpx transport
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TMR_PRODUCT, ORDINARY = 42, 43


def products(central: Central) -> None:
    central.create_product("ops", T0, TMR_PRODUCT, "CAD Pro TMR", {"feature_map": 3, "units": 500}, tmr=True)
    central.create_product("ops", T0, ORDINARY, "CAD Pro")


def order(central: Central, tmr: int = 1, ordinary: int = 0) -> tuple[str, list[int], list[int]]:
    lines: list[dict[str, Any]] = []
    if tmr:
        lines.append({"product_code": TMR_PRODUCT, "quantity": 10, "count": tmr})
    if ordinary:
        lines.append({"product_code": ORDINARY, "quantity": 1, "count": ordinary})
    made = central.create_order("sales", T0, lines)
    ids = [lic["id"] for lic in made["licenses"]]
    return str(made["ticket"]), ids[:tmr], ids[tmr:]


def group_of(boxes: list[Box], now: int = T0) -> bytes:
    return tmrgroup.make_group_request([b.request(now) for b in boxes])


def apply_group(data: bytes, boxes: list[Box], now: int = T0) -> list[bytes]:
    group = tmrgroup.read_group_update(data)
    return [b.apply(tmrgroup.part_for(group, {b.content.serial}).update, now) for b in boxes]


def refused(call: Any, code: ErrorCode) -> str:
    with pytest.raises(LicentiaError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value.message


def test_a_tmr_license_goes_into_three_constituents_by_group_request_update_and_receipt(central: Central) -> None:
    products(central)
    tmr = TmrProducts(central)
    ticket, (lic1, lic2), (plain,) = order(central, tmr=2, ordinary=1)
    boxes = [Box.new() for _ in range(3)]
    group = group_of(boxes)

    # a single container's request for a TMR license, a group request for an ordinary one: refused
    assert "by a group request" in refused(lambda: central.activate(ticket, boxes[0].request(), T0, licenses=[lic1]),
                                           ErrorCode.TMR_PRODUCT_NEEDS_GROUP)
    assert "ordinary product" in refused(lambda: tmr.activate_group(ticket, group, T0, licenses=[plain]),
                                         ErrorCode.TMR_GROUP_NOT_TMR)
    only_plain, _, _ = order(central, tmr=0, ordinary=1)
    refused(lambda: tmr.activate_group(only_plain, group, T0), ErrorCode.TMR_GROUP_NOT_TMR)
    only_tmr, _, _ = order(central, tmr=1)
    refused(lambda: central.activate(only_tmr, boxes[0].request(), T0), ErrorCode.TMR_PRODUCT_NEEDS_GROUP)
    # ... and nothing was registered or issued by the refusals
    assert central.list_containers() == []

    # the group request: one group update, the firm's first TMR id, the item naming the three
    issued = tmr.activate_group(ticket, group, T0)
    assert issued.tmr_id == 1 and issued.license_id == lic1
    signed = tmrgroup.read_group_update(issued.update, central.firm.public_key)
    assert sorted(signed.serials()) == sorted(b.serial for b in boxes) and signed.tmr_id == 1
    receipts = apply_group(issued.update, boxes)
    named = sorted((b.serial, b.content.software_keys().sign_public) for b in boxes)
    for b in boxes:
        entry = b.items()[lic1]
        assert entry.item.tmr_id == 1 and list(entry.item.tmr_constituents) == named
        assert entry.item.product_code == TMR_PRODUCT and entry.item.quantity == 10 and entry.item.units == 500

    # a group receipt with one constituent missing: the two are confirmed, the third named (1462)
    partial = tmrgroup.make_group_receipt(receipts[:2])
    message = refused(lambda: tmr.confirm_group_receipt(partial, T0), ErrorCode.TMR_GROUP_INCOMPLETE)
    assert f"container {boxes[2].serial}: no receipt" in message
    states = {a["serial"]: a["state"] for a in _activations(central, lic1)}
    assert states == {boxes[0].serial: "active", boxes[1].serial: "active", boxes[2].serial: "pending"}
    done = tmr.confirm_group_receipt(tmrgroup.make_group_receipt(receipts), T0)
    assert done["complete"] and done["tmr_id"] == 1 and len(done["confirmed"]) == 3
    assert {a["state"] for a in _activations(central, lic1)} == {"active"}
    [shown] = [lic for lic in central.get_ticket(ticket)["licenses"] if lic["id"] == lic1]
    assert shown["status"] == "active" and shown["tmr_id"] == 1 and shown["serials"] == sorted(b.serial for b in boxes)
    assert tmr.confirm_group_receipt(tmrgroup.make_group_receipt(receipts), T0)["complete"]  # again: harmless
    # one constituent is not returned or replaced on its own
    assert "TMR licenses" in refused(lambda: central.return_licenses(ticket, boxes[0].request(T0 + 1), T0 + 1),
                                     ErrorCode.ACCESS_DENIED)
    refused(lambda: central.request_replacement(ticket, boxes[1].serial, T0 + 1), ErrorCode.ACCESS_DENIED)

    # the next TMR license of the ticket, into three other containers: the next TMR id
    others = [Box.new() for _ in range(3)]
    second = tmr.activate_group(ticket, group_of(others), T0 + 5)
    assert second.tmr_id == 2 and second.license_id == lic2
    # the group update lost and asked for again: the same license, carried, under the same id
    again = tmr.activate_group(ticket, group_of(others, T0 + 6), T0 + 6)
    assert again.tmr_id == 2 and again.license_id == lic2
    tmr.confirm_group_receipt(tmrgroup.make_group_receipt(apply_group(again.update, others, T0 + 7)), T0 + 7)
    # no TMR license left on the ticket
    assert "no TMR license" in refused(lambda: tmr.activate_group(ticket, group_of([Box.new() for _ in range(3)]), T0),
                                       ErrorCode.LICENSE_NOT_AVAILABLE)
    # the ordinary license still goes by a single request (the TMR ones are not taken along)
    box = Box.new()
    plain_update = central.activate(ticket, box.request(), T0)
    assert [op["license"] for op in plain_update.operations] == [plain]
    # a group receipt answering no group update central issued
    stray = tmrgroup.make_group_receipt([box.apply(plain_update.update)])
    refused(lambda: tmr.confirm_group_receipt(stray, T0), ErrorCode.TMR_GROUP_NOT_ISSUED)


def _activations(central: Central, license_id: int) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from licentia.central.db import Activation

    with central.db.transaction() as s:
        rows = s.execute(select(Activation).where(Activation.license_id == license_id)).scalars()
        return [{"serial": a.serial, "state": a.state} for a in rows]


def test_tmr_ids_are_taken_one_each_by_concurrent_activations(central: Central) -> None:
    products(central)
    tmr = TmrProducts(central)
    tickets = [order(central)[0] for _ in range(4)]
    groups = [group_of([Box.new() for _ in range(3)]) for _ in tickets]
    got: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(tickets))

    def run(ticket: str, group: bytes) -> None:
        try:
            start.wait()
            got.append(tmr.activate_group(ticket, group, T0).tmr_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(tickets, groups, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == [1, 2, 3, 4]


def test_the_api_activates_a_tmr_product_with_group_files(central: Central) -> None:
    token = central.ensure_admin_token(T0)
    http = TestClient(create_app(central, clock=lambda: T0), raise_server_exceptions=True)
    admin = {"Authorization": f"Bearer {token}"}
    made = http.post("/api/products", json={"product_code": TMR_PRODUCT, "name": "CAD Pro TMR", "tmr": True,
                                            "template": {"units": 100}}, headers=admin)
    assert made.status_code == 201 and made.json()["tmr"] is True, made.text
    ticket = http.post("/api/orders", json={"lines": [{"product_code": TMR_PRODUCT, "quantity": 3}]},
                       headers=admin).json()["ticket"]
    boxes = [Box.new() for _ in range(3)]

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    single = http.post(f"/api/tickets/{ticket}/activate", json={"request": b64(boxes[0].request())})
    assert single.status_code >= 400 and single.json()["error"]["code"] == ErrorCode.TMR_PRODUCT_NEEDS_GROUP, single.text
    answer = http.post(f"/api/tickets/{ticket}/activate", json={"request": b64(group_of(boxes))})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["tmr_id"] == 1 and sorted(p["serial"] for p in body["parts"]) == sorted(b.serial for b in boxes)
    receipts = apply_group(base64.b64decode(body["update"]), boxes)
    confirmed = http.post("/api/receipts", json={"receipt": b64(tmrgroup.make_group_receipt(receipts))})
    assert confirmed.status_code == 200 and confirmed.json()["complete"], confirmed.text
    # a template or order naming a TMR id is refused: central gives them
    bad = http.post("/api/orders", json={"lines": [{"product_code": TMR_PRODUCT, "options": {"tmr_id": 9}}]},
                    headers=admin)
    assert bad.status_code == 422 and "TMR id" in bad.json()["error"]["message"], bad.text
