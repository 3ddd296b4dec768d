"""Cloud containers: licenses that stay in central, seats counted in the database, credential
files that can be re-issued (the old one stops at once) — also with two central servers on
one database."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from central_helpers import T0, live

from licentia.central.client import CentralClient, CloudClient
from licentia.central.cloud import Cloud, read_credential
from licentia.central.db import Database
from licentia.central.service import Central
from licentia.model import ErrorCode, LicentiaError


def cloud_ticket(central: Central, quantity: int | None = 2, template: dict | None = None) -> str:
    central.create_product("ops", T0, 77, "Cloud Suite", template or {})
    return str(central.create_order("sales", T0, [{"product_code": 77, "quantity": quantity}])["ticket"])


def test_seats_are_counted_and_credentials_reissued(central: Central) -> None:
    cloud = Cloud(central, "http://central.example")
    ticket = cloud_ticket(central)
    moved = cloud.move_to_cloud(ticket, T0)
    cred = moved["credential"]
    assert cred["serial"].startswith("140-") and read_credential(json.dumps(cred))["secret"] == cred["secret"]
    assert central.get_ticket(ticket)["licenses"][0]["status"] == "active"
    serial, secret = cred["serial"], cred["secret"]
    a = cloud.access(serial, secret, 77, "ws1", T0)
    b = cloud.access(serial, secret, 77, "ws2", T0)
    assert a["handle"] != b["handle"] and bytes.fromhex(a["grant"])[:4] == b"LCCG"
    with pytest.raises(LicentiaError) as exc:
        cloud.access(serial, secret, 77, "ws3", T0)
    assert exc.value.code == ErrorCode.NO_MORE_LICENSES
    assert cloud.items(serial, secret, T0)["items"][0]["in_use"] == 2
    cloud.release(serial, secret, a["handle"], T0)
    c = cloud.access(serial, secret, 77, "ws3", T0)
    # a seat whose lease ran out is reclaimed
    cloud.heartbeat(serial, secret, c["handle"], T0 + 200)
    d = cloud.access(serial, secret, 77, "ws4", T0 + 400)
    assert d["handle"]
    with pytest.raises(LicentiaError) as exc:
        cloud.heartbeat(serial, secret, b["handle"], T0 + 400)
    assert exc.value.code == ErrorCode.INVALID_HANDLE
    # a new credential file: the old one stops at once
    new = cloud.reissue_credential(ticket, T0 + 500)["credential"]
    with pytest.raises(LicentiaError) as exc:
        cloud.items(serial, secret, T0 + 500)
    assert exc.value.code == ErrorCode.CREDENTIAL_INVALID
    assert cloud.items(serial, new["secret"], T0 + 500)["items"]
    # a blacklisted cloud container is locked
    central.blacklist("ops", T0 + 600, serial, "stolen")
    with pytest.raises(LicentiaError) as exc:
        cloud.access(serial, new["secret"], 77, "ws9", T0 + 600)
    assert exc.value.code == ErrorCode.LOCKED
    actions = [e["action"] for e in central.audit(subject=serial)]
    assert actions.count("cloud.credential") == 2 and "cloud.access" in actions


def test_expired_cloud_license_is_refused(central: Central) -> None:
    cloud = Cloud(central)
    ticket = cloud_ticket(central, template={"expires_at": T0 + 100})
    cred = cloud.move_to_cloud(ticket, T0)["credential"]
    cloud.access(cred["serial"], cred["secret"], 77, "ws1", T0)
    with pytest.raises(LicentiaError) as exc:
        cloud.access(cred["serial"], cred["secret"], 77, "ws1", T0 + 101)
    assert exc.value.code == ErrorCode.EXPIRED
    returned = cloud.return_from_cloud(ticket, T0 + 102)
    assert returned["returned"] and central.get_ticket(ticket)["licenses"][0]["status"] == "available"


def test_two_central_servers_on_one_database_never_oversell(central: Central, database: Database) -> None:
    """Two servers, each with its own engine and pool (as two processes would), one database."""
    ticket = cloud_ticket(central, quantity=3)
    second = Central(Database(database.url), central.firm)
    try:
        with live(central) as url_a, live(second) as url_b, CentralClient(url_a) as user:
            cred = user.call("POST", f"/api/tickets/{ticket}/cloud")["credential"]

            def take(i: int) -> str:
                with CloudClient({**cred, "central": url_a if i % 2 else url_b}) as runtime:
                    try:
                        runtime.access(77, f"station{i}")
                        return "ok"
                    except LicentiaError as exc:
                        return exc.code.name

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(take, range(10)))
            assert results.count("ok") == 3, results
            assert set(results) == {"ok", "NO_MORE_LICENSES"}
            # re-issue through the other server: the first credential is refused by both
            fresh = CentralClient(url_b).call("POST", f"/api/tickets/{ticket}/cloud/credential")["credential"]
            for url in (url_a, url_b):
                with CloudClient({**cred, "central": url}) as stale, pytest.raises(LicentiaError) as exc:
                    stale.items()
                assert exc.value.code == ErrorCode.CREDENTIAL_INVALID
            with CloudClient({**fresh, "central": url_a}) as runtime:
                assert runtime.items()["items"][0]["in_use"] == 3
    finally:
        second.db.dispose()
