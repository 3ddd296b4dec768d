"""Token containers through the runtime, on SoftHSM2: every access proven by the token, a
pulled token frees its seats, a second runtime takes the token away, rapid changes of
hands lock it out for every runtime."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.harness import Procs, Program, Runtime, Vendor, wait_for
from tests.tokens import TokenStore, softhsm_store

from licentia.core import updates as U
from licentia.core.content import ContainerContent
from licentia.model import ProductItem

PIN = "1234"


@pytest.fixture
def store() -> Iterator[TokenStore]:
    with softhsm_store() as s:
        yield s


def token_container(store: TokenStore, vendor: Vendor, items: list[ProductItem], label: str = "lic") -> tuple[str, Path]:
    """A new SoftHSM2 token made a container holding `items`: its serial and its directory."""
    from licentia.containers.token import TokenContainer

    before = set((store.directory / "tokens").iterdir())
    store.add_token(label, pin=PIN)
    (directory,) = set((store.directory / "tokens").iterdir()) - before
    now = int(time.time())
    with TokenContainer.create(store.module, label=label, pin=PIN, now=now) as c:
        def change(content: ContainerContent) -> tuple[ContainerContent, U.Applied]:
            request = U.read_request(U.make_request(content, vendor.firm, now, {}, keys=c.keys))
            ops: list[U.Operation] = [U.PutItem(i + 1, item) for i, item in enumerate(items)]
            update = U.issue_update(request, vendor.firm, vendor.private, ops, now)
            applied = U.apply_update(content, update, now, in_vm=False, keys=c.keys)
            return applied.content, applied

        c.transact(change)
        return str(c.serial), directory


def token_runtime(procs: Procs, home: Path, root: Path, store: TokenStore, *flags: str) -> Runtime:
    home.mkdir(parents=True, exist_ok=True)
    pin_file = home / "pin"
    pin_file.write_text(PIN + "\n")
    return Runtime(procs, home, root, "--token-module", store.module, "--token-pin-file", str(pin_file),
                   "--token-scan-interval", "0.5", "--token-watch-interval", "0.2", *flags)


def get(rt: Runtime, path: str) -> Any:
    with urllib.request.urlopen(f"{rt.http}{path}", timeout=10) as r:
        return json.loads(r.read())


def token_row(rt: Runtime, serial: str) -> dict[str, Any]:
    rows = [c for c in get(rt, "/api/containers") if c["serial"] == serial]
    assert len(rows) == 1, rows
    row: dict[str, Any] = rows[0]
    return row


def _seconds_left(text: str) -> int:
    match = re.search(r"locked out for (\d+) s more", text)
    assert match, text
    return int(match.group(1))


def removals(rt: Runtime, serial: str) -> list[dict[str, Any]]:
    return rt.logged("the removal in the log",
                     lambda e: e.get("event") == "container-removed" and e.get("container") == serial)


def test_access_is_proven_by_the_token_and_a_pulled_token_frees_its_seats(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, store: TokenStore
) -> None:
    serial, directory = token_container(store, vendor, [ProductItem(product_code=7, quantity=2, units=50)])
    home = tmp_path / "home"
    rt = token_runtime(procs, home, root, store)
    row = wait_for("the token container", lambda: token_row(rt, serial) if any(
        c["serial"] == serial and c["status"] == "ok" for c in get(rt, "/api/containers")) else None)
    assert row["kind"] == "token" and "claimed by this runtime" in row["binding"]
    assert (home / "state" / "runtime.id").read_text().strip() in row["binding"]

    env = {"LICENTIA_HOME": str(home)}
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    prog = Program(procs, root, env, **opts)
    # the program verified the vendor's license and the token's signature over its challenge
    assert prog.granted and prog.first["verified"] and prog.first["container"] == serial, prog.first
    assert prog.ask("decrement 3") == {"units": 47}  # written into the token, proven by it
    assert prog.ask("check")["valid"] is True
    assert [r["container"] for r in rt.sessions()] == [serial]

    pulled = store.directory / "pulled"
    directory.rename(pulled)  # the token is pulled (all at once, as a USB token is)
    wait_for("the seats of the pulled token to be freed", lambda: rt.sessions() == [])
    answer = prog.ask("check")
    assert answer["valid"] is False and set(answer["events"]) == {"container-removed", "license-gone"}, answer
    again = Program(procs, root, env, **opts)
    # nothing left to grant, and the program is told why: the token was pulled (not 200, not found)
    assert again.first["error"] == 1117 and "no longer present" in again.first["message"], again.first
    assert f"token 'lic' holding container {serial}" in again.first["message"]
    assert f"token container {serial} on token 'lic' gone (1117)" in rt.output()  # the console says so
    assert token_row(rt, serial)["status"] == "gone"
    released = wait_for("the release in the log", lambda: [
        e for e in rt.usage_log() if e.get("event") == "release" and e.get("reason") == "container-removed"])
    assert released[0]["handle"] == prog.first["handle"] and released[0]["container"] == serial
    (removed,) = removals(rt, serial)
    assert removed["kind"] == "token" and removed["reason"] == "token gone" and removed["code"] == 1117
    events = get(rt, "/api/events")
    assert any(e.get("event") == "container-removed" and e.get("container") == serial for e in events)

    # Plugged back in: the runtime takes it back without a restart, and programs get licenses again.
    pulled.rename(directory)
    row = wait_for("the token to be taken back", lambda: token_row(rt, serial) if token_row(rt, serial)["status"] == "ok"
                   else None)
    assert "claimed by this runtime" in row["binding"] and "took over" not in row["binding"]
    back = Program(procs, root, env, **opts)
    assert back.granted and back.first["verified"] and back.first["container"] == serial, back.first
    assert prog.ask("check")["valid"] is False  # the seat freed at the pull stays freed
    assert "(taken back: it was gone)" in rt.output()


@pytest.mark.slow
def test_a_second_runtime_takes_the_token_away_and_rapid_changes_lock_it_out_for_both(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, store: TokenStore
) -> None:
    serial, _ = token_container(store, vendor, [ProductItem(product_code=8, quantity=3)])
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    a = token_runtime(procs, home_a, root, store)
    wait_for("runtime a to serve the token", lambda: token_row(a, serial)["status"] == "ok")
    opts = {"firm_code": vendor.firm, "product_code": 8, "firm_key": str(vendor.public_file)}
    on_a = Program(procs, root, {"LICENTIA_HOME": str(home_a)}, **opts)
    assert on_a.granted, on_a.first

    # A second runtime claims the token: the first frees its seats and says it was taken away.
    b = token_runtime(procs, home_b, root, store)  # change of hands 1
    wait_for("runtime b to serve the token", lambda: token_row(b, serial)["status"] == "ok")
    assert "took over" in token_row(b, serial)["binding"]
    wait_for("runtime a to let go", lambda: token_row(a, serial)["status"] == "taken away")
    assert a.sessions() == []
    assert set(on_a.ask("check")["events"]) == {"container-removed", "license-gone"}
    (removed,) = removals(a, serial)
    assert removed["reason"] == "token taken away" and removed["code"] == 1118
    late_on_a = Program(procs, root, {"LICENTIA_HOME": str(home_a)}, **opts)
    assert late_on_a.first["error"] == 1118 and "runtime" in late_on_a.first["message"], late_on_a.first
    assert f"token container {serial} on token 'lic' taken away (1118)" in a.output()
    on_b = Program(procs, root, {"LICENTIA_HOME": str(home_b)}, **opts)
    assert on_b.granted and on_b.first["verified"]
    # runtime a does not grab it back while b holds it
    time.sleep(1.2)  # several scans of runtime a
    assert token_row(a, serial)["status"] == "taken away" and token_row(b, serial)["status"] == "ok"

    # The token hops back and forth (runtimes restarted): the 4th change within a minute locks it out.
    a.stop()
    a.start()  # change 2
    wait_for("a to hold it again", lambda: token_row(a, serial)["status"] == "ok")
    wait_for("b to let go", lambda: token_row(b, serial)["status"] == "taken away")
    b.stop()
    b.start()  # change 3
    wait_for("b to hold it again", lambda: token_row(b, serial)["status"] == "ok")
    wait_for("a to let go", lambda: token_row(a, serial)["status"] == "taken away")
    a.stop()
    a.start()  # change 4: refused, and the token is locked out for every runtime
    row_a = wait_for("a to see the lockout", lambda: token_row(a, serial) if token_row(a, serial)["status"] == "locked out" else None)
    assert row_a["code"] == 1119 and "locked out for" in row_a["binding"]
    row_b = wait_for("b to see the lockout", lambda: token_row(b, serial) if token_row(b, serial)["status"] == "locked out" else None)
    assert row_b["code"] == 1119
    assert a.sessions() == [] and b.sessions() == []
    for home in (home_a, home_b):
        refused = Program(procs, root, {"LICENTIA_HOME": str(home)}, **opts)
        assert refused.first["error"] == 1119 and " s more" in refused.first["message"], refused.first
    for rt in (a, b):
        assert "locked out (1119)" in rt.output()
    left = _seconds_left(token_row(b, serial)["binding"])
    time.sleep(1.2)  # the runtimes keep looking, and keep honouring the lockout
    assert token_row(a, serial)["status"] == "locked out" and token_row(b, serial)["status"] == "locked out"
    assert _seconds_left(token_row(b, serial)["binding"]) < left <= 300  # counted when asked, not frozen
    refused = Program(procs, root, {"LICENTIA_HOME": str(home_b)}, **opts)
    assert _seconds_left(refused.first["message"]) < left


def test_a_restarted_runtime_keeps_its_token_and_the_programs_their_seats(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, store: TokenStore
) -> None:
    serial, _ = token_container(store, vendor, [ProductItem(product_code=9, quantity=1)])
    home = tmp_path / "home"
    rt = token_runtime(procs, home, root, store)
    wait_for("the token container", lambda: token_row(rt, serial)["status"] == "ok")
    prog = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=vendor.firm, product_code=9,
                   firm_key=str(vendor.public_file))
    assert prog.granted
    wait_for("the snapshot", lambda: (home / "state" / "seats.snapshot").exists())
    rt.stop()  # gives the claim up; the same runtime id claims it again: no change of hands
    rt.start()
    row = wait_for("the token again", lambda: token_row(rt, serial) if token_row(rt, serial)["status"] == "ok" else None)
    assert "took over" not in row["binding"]
    answer = prog.ask("check")  # proven by the token again, for the same handle
    assert answer["valid"] is True and "error" not in answer, answer
    assert [r["handle"] for r in rt.sessions()] == [prog.first["handle"]]


def test_the_runtime_sends_the_pin_given_now_and_tries_it_after_wrong_pins(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, store: TokenStore
) -> None:
    from licentia.containers.pkcs11 import list_tokens, open_session, reinitialize
    from licentia.model import ErrorCode, LicentiaError

    serial, _ = token_container(store, vendor, [ProductItem(product_code=11, quantity=1)])
    home = tmp_path / "home"
    (home / "containers").mkdir(parents=True)
    stale, new = tmp_path / "stale-pin", tmp_path / "new-pin"
    stale.write_text(PIN + "\n")
    new.write_text("8765\n")
    (home / "containers" / "tokens.json").write_text(json.dumps({"module": store.module, "containers": {
        serial: {"token_label": "lic", "token_serial": "", "pin_file": str(stale)}}}))
    with open_session(store.module, label="lic", pin=PIN) as session:
        session.change_pin(PIN, "8765")  # the recorded PIN file is stale now
    with pytest.raises(LicentiaError) as err, open_session(store.module, label="lic", pin="0000"):
        pass
    assert err.value.code is ErrorCode.PIN_INCORRECT
    reinitialize(store.module)
    assert [t.pin_state for t in list_tokens(store.module)] == ["count low"]  # a wrong PIN was entered

    rt = Runtime(procs, home, root, "--token-scan-interval", "0.5", "--token-watch-interval", "0.2",
                 env={"LICENTIA_PIN_FILE": str(new)})
    row = wait_for("the token container", lambda: token_row(rt, serial) if any(
        c["serial"] == serial and c["status"] in ("ok", "PIN refused", "PIN not tried") for c in get(rt, "/api/containers"))
        else None)
    assert row["status"] == "ok", row  # $LICENTIA_PIN_FILE won over the recorded file; COUNT_LOW did not stop it
    assert "tries were used" in row["binding"] and "CKF_USER_PIN_COUNT_LOW" in row["binding"]
    prog = Program(procs, root, {"LICENTIA_HOME": str(home)}, firm_code=vendor.firm, product_code=11,
                   firm_key=str(vendor.public_file))
    assert prog.granted and prog.first["verified"], prog.first
