"""Cloud containers through the runtime, against a real `licentia central serve`: seats counted
in central across runtimes, released when programs release or end, a re-issued credential
ends the old one at once, a program verifies a cloud license like any other."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.central_live import Keystore, LiveCentral
from tests.runtime.harness import Procs, Program, Runtime, wait_for

from licentia.central.client import CentralClient
from licentia.core.cloud import (
    Grant,
    check_grant,
    issue_grant,
    item_from_wire,
    item_to_wire,
    parse_credential,
    read_grant,
)
from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import ErrorCode, LicentiaError, ProductItem, VersionRange


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Keystore:
    return Keystore.make(tmp_path_factory.mktemp("firm"))


@pytest.fixture
def central(tmp_path: Path, procs: Procs, keystore: Keystore) -> Iterator[LiveCentral]:
    c = LiveCentral(procs, keystore, tmp_path / "central")
    yield c
    c.stop()


def get(rt: Runtime, path: str) -> Any:
    with urllib.request.urlopen(f"{rt.http}{path}", timeout=10) as r:
        return json.loads(r.read())


def cloud_row(rt: Runtime) -> dict[str, Any]:
    (row,) = [c for c in get(rt, "/api/containers") if c["kind"] == "cloud"]
    result: dict[str, Any] = row
    return result


def in_use(url: str, credential: dict[str, Any]) -> int:
    with CentralClient(url) as c:
        items = c.call("POST", "/api/cloud/items", {"serial": credential["serial"], "secret": credential["secret"]})
    return int(sum(i["in_use"] for i in items["items"]))


@pytest.mark.slow
def test_cloud_seats_are_counted_in_central_and_a_new_credential_ends_the_old_one(
    tmp_path: Path, root: Path, procs: Procs, central: LiveCentral
) -> None:
    central.api("POST", "/api/products", {"product_code": 77, "name": "Cloud Suite"})
    ticket = central.api("POST", "/api/orders", {"lines": [{"product_code": 77, "quantity": 2}]})["ticket"]
    with CentralClient(central.url) as user:
        credential = user.call("POST", f"/api/tickets/{ticket}/cloud")["credential"]
    assert parse_credential(json.dumps(credential)).firm_public_key == central.public_key
    serial = credential["serial"]
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
        (home / "cloud.json").write_text(json.dumps(credential))
    a, b = (Runtime(procs, home, root, "--cloud-credential", "cloud.json", "--cloud-refresh", "0.5") for home in homes)
    for rt in (a, b):
        wait_for("the cloud container", lambda rt=rt: cloud_row(rt)["status"] == "ok")
    assert cloud_row(a)["serial"] == serial and cloud_row(a)["items"] == 1

    opts = {"firm_code": central.firm_code, "product_code": 77, "firm_key": str(central.public_file)}
    env_a, env_b = {"LICENTIA_HOME": str(homes[0])}, {"LICENTIA_HOME": str(homes[1])}
    first = Program(procs, root, env_a, **opts)
    # the program verified central's license for this runtime's key and the runtime's proof
    assert first.granted and first.first["verified"] and first.first["container"] == serial, first.first
    second = Program(procs, root, env_b, **opts)
    assert second.granted, second.first
    assert in_use(central.url, credential) == 2
    third = Program(procs, root, env_b, **opts)  # both seats taken, one in each runtime: central says no
    assert third.first["error"] == 212
    assert [r["container"] for r in a.sessions()] == [serial]

    assert first.ask("release") == {"released": True}
    wait_for("central to count the seat free", lambda: in_use(central.url, credential) == 1)
    fourth = Program(procs, root, env_b, **opts)
    assert fourth.granted
    fourth.kill()  # a program that ends gives its seat back too
    wait_for("central to count the ended program's seat free", lambda: in_use(central.url, credential) == 1)
    audit = central.api("GET", "/api/audit")
    actions = [e["action"] for e in (audit if isinstance(audit, list) else audit.get("entries", []))]
    assert actions.count("cloud.access") >= 3 and actions.count("cloud.release") >= 2

    # A new credential file: the old one stops at once, and both runtimes report the container gone.
    with CentralClient(central.url) as user:
        new = user.call("POST", f"/api/tickets/{ticket}/cloud/credential")["credential"]
    for rt in (a, b):
        wait_for("the runtime to drop the cloud container", lambda rt=rt: cloud_row(rt)["status"] == "credential refused")
        assert cloud_row(rt)["code"] == int(ErrorCode.CREDENTIAL_INVALID)
    assert b.sessions() == []
    answer = second.ask("check")
    assert answer["valid"] is False and set(answer["events"]) == {"container-removed", "license-gone"}, answer
    removed = b.logged("the removal in the log", lambda e: e.get("event") == "container-removed")
    assert removed[0]["kind"] == "cloud" and removed[0]["code"] == 1210 and removed[0]["released"] == 1
    # a program started now is told why: the credential was replaced (1210), as the status page says
    refused = Program(procs, root, env_b, **opts)
    assert refused.first["error"] == int(ErrorCode.CREDENTIAL_INVALID), refused.first
    assert serial in refused.first["message"] and "replaced or revoked" in refused.first["message"]
    assert cloud_row(b)["binding"].endswith(refused.first["message"].split(": ", 1)[1])

    # The new file put in place: served again.
    (homes[0] / "cloud.json").write_text(json.dumps(new))
    wait_for("the new credential to be used", lambda: cloud_row(a)["status"] == "ok")
    again = Program(procs, root, env_a, **opts)
    assert again.granted and again.first["verified"], again.first


# -- the pure parts shared with central ------------------------------------------------------


def test_credential_files_are_checked() -> None:
    good = {"format": "licentia-cloud-credential", "version": 1, "central": "http://127.0.0.1:1/", "firm_code": 7,
            "serial": "140-12345", "secret": "s3cret", "issued_at": 1}
    cred = parse_credential(json.dumps(good))
    assert str(cred.serial) == "140-12345" and cred.central == "http://127.0.0.1:1" and cred.firm_public_key is None
    assert parse_credential(json.dumps(cred.to_dict())) == cred
    for bad in ({**good, "format": "x"}, {**good, "version": 2}, {**good, "serial": "130-12345"},
                {**good, "central": "ftp://x"}, {**good, "secret": ""}, {**good, "firm_public_key": "zz"},
                {k: v for k, v in good.items() if k != "secret"}):
        with pytest.raises(LicentiaError) as exc:
            parse_credential(json.dumps(bad))
        assert exc.value.code is ErrorCode.CREDENTIAL_INVALID
    with pytest.raises(LicentiaError):
        parse_credential(b"\xff not json")


def test_grants_verify_only_under_the_firm_key_and_for_the_seat_asked() -> None:
    firm = new_signing_key()
    grant = Grant("140-5", 7, 3, 77, "h1", 1300, 1000)
    data = issue_grant(grant, firm)
    assert read_grant(data, signing_public_key(firm)) == grant
    check_grant(grant, serial="140-5", firm_code=7, product_code=77, handle="h1")
    with pytest.raises(LicentiaError) as exc:
        read_grant(data, signing_public_key(new_signing_key()))
    assert exc.value.code is ErrorCode.SECURITY_PROBLEM
    with pytest.raises(LicentiaError):
        read_grant(data[:-1] + bytes([data[-1] ^ 1]), signing_public_key(firm))
    for other in ({"serial": "140-6"}, {"product_code": 78}, {"handle": "h2"}, {"firm_code": 8}):
        args: dict[str, Any] = {"serial": "140-5", "firm_code": 7, "product_code": 77, "handle": "h1", **other}
        with pytest.raises(LicentiaError):
            check_grant(grant, **args)


def test_items_survive_the_wire() -> None:
    item = ProductItem(product_code=9, quantity=None, feature_map=5, text="Pro", user_data=b"\x00\x01",
                       protected_data=b"p", versions=VersionRange.parse("2.0-"), checkpoint_period=60)
    wire = item_to_wire(item)
    assert json.loads(json.dumps(wire)) == wire
    assert item_from_wire(wire) == item
    with pytest.raises(LicentiaError):
        item_from_wire({**wire, "user_data": "not hex"})

