"""The flows as users meet them: central on a real socket (SQLite and PostgreSQL) and the
`licentia` command in its own process for the user's side — replacement on the same device,
the registered license server's host name, automatic activation, the blacklist and back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from central_helpers import live

from licentia.central.client import CentralClient
from licentia.central.service import Central
from licentia.model import ErrorCode, LicentiaError

EXE = [sys.executable, "-m", "licentia.cli.main"]
ENV = dict(os.environ)
HOST = os.uname().nodename.lower()
HOUR = 3600
# The flows below run the command many times; they run on SQLite (the decisions beneath them
# run on PostgreSQL too in test_central_service.py).
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def run(home: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*EXE, "--home", str(home), *args], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == code, r.stderr + r.stdout
    return r


def new_container(home: Path) -> str:
    return run(home, "container", "create").stdout.strip()


@sqlite_only
def test_replacement_on_the_same_device_through_the_command(central: Central, tmp_path: Path) -> None:
    now = int(time.time())
    central.create_product("ops", now, 42, "CAD Pro", {}, {
        "replace": {"allowed": False},
        "same_device": {"allowed": True, "max_count": 2, "match": ["hostname", "machine_id"]},
    })
    ticket = central.create_order("sales", now, [{"product_code": 42, "quantity": 3}])["ticket"]
    old_home, new_home = tmp_path / "old", tmp_path / "new"
    old, new = new_container(old_home), new_container(new_home)
    with live(central) as url:
        ops = ("--central", url)
        run(old_home, "activate", ticket, *ops)
        seen = central.get_container(old)["environment"]
        assert seen["hostname"] == HOST and len(seen["machine_id"]) == 32  # hashed, not the id itself

        # The system was reinstalled: a new container on the same machine asks for the licenses.
        out = run(new_home, "replace", ticket, old, "--same-device", *ops).stdout
        assert "approved by policy" in out and f"licentia activate {ticket}" in out
        assert "added item" in run(new_home, "activate", ticket, *ops).stdout
        assert central.get_container(old)["blacklisted"] == "replaced"

        # Replacement of a lost container beyond the policy: asked twice, one request waits.
        for _ in range(2):
            r = run(new_home, "replace", ticket, new, *ops, code=2)
            assert "error 1207" in r.stderr
        (pending,) = central.list_replacements("pending")
        assert f"replacement {pending['id']} is beyond" in r.stderr
    decided = central.approve_replacement("token:ops", now, pending["id"])
    assert (decided["decided_by"], decided["decided_actor"]) == ("operator", "token:ops")
    assert [r["decided_by"] for r in central.list_replacements("approved")] == ["policy", "operator"]


def test_the_registered_servers_host_name_on_every_path(central: Central, tmp_path: Path) -> None:
    now = int(time.time())
    central.create_product("ops", now, 42, "CAD Pro", {})
    customer = central.create_customer("sales", now, "ACME", "Kobe", "multi-user", "farhost.example.com", "10.0.0.5")
    ticket = central.create_order("sales", now, [{"product_code": 42}], customer_id=customer["id"])["ticket"]
    home = tmp_path / "user"
    serial = new_container(home)
    request = tmp_path / "request.lcrq"
    run(home, "update", "request", serial, "--firm-code", str(central.firm.firm_code), "-o", str(request))
    message = f"registered license server 'farhost.example.com'; this request comes from '{HOST}'"
    with live(central) as url:
        with CentralClient(url) as user, pytest.raises(LicentiaError) as exc:
            user.activate(ticket, request.read_bytes(), how="offline")  # a request file, as the portal sends it
        assert exc.value.code == ErrorCode.LICENSE_TYPE_CONFLICT and message in exc.value.message
        assert message in run(home, "activate", ticket, "--central", url, code=2).stderr
    assert central.get_customer(customer["id"])["server_serial"] is None
    assert central.get_ticket(ticket)["licenses"][0]["status"] == "available"


@sqlite_only
def test_a_blacklisted_container_is_told_and_unlocked_when_taken_off(central: Central, tmp_path: Path) -> None:
    now = int(time.time())
    central.create_product("ops", now, 42, "CAD Pro", {})
    first, second = (central.create_order("sales", now, [{"product_code": 42}])["ticket"] for _ in range(2))
    home = tmp_path / "user"
    serial = new_container(home)
    with live(central) as url:
        ops = ("--central", url)
        run(home, "activate", first, *ops)
        central.blacklist("token:ops", now, serial, "stolen")
        r = run(home, "activate", second, *ops, code=2)
        assert "error 73" in r.stderr and "blacklist" in r.stderr and "locked all items" in r.stdout
        assert "LOCKED" in run(home, "container", "show", serial).stdout
        assert central.get_ticket(second)["licenses"][0]["status"] == "available"
        # Taken off the blacklist: a signed unlock reaches it at its next contact.
        central.unblacklist("token:ops", now, serial)
        assert central.get_container(serial)["lock"] == "unlocking"
        assert "unlocked all items" in run(home, "sync", *ops).stdout
        assert "LOCKED" not in run(home, "container", "show", serial).stdout
        assert central.get_container(serial)["lock"] == "none"
        assert "added item" in run(home, "activate", second, *ops).stdout


@sqlite_only
def test_a_registered_server_gets_every_ticket_within_the_wait(central: Central, tmp_path: Path) -> None:
    clock = [int(time.time())]
    t0 = clock[0]
    token = central.ensure_admin_token(t0)
    token_file = tmp_path / "admin.token"
    token_file.write_text(f"{token}\n")
    central.create_product("ops", t0, 42, "CAD Pro", {})
    home = tmp_path / "server"
    serial = new_container(home)
    with live(central, clock=lambda: clock[0]) as url:
        ops = ("--central", url, "--token-file", str(token_file))
        shown = run(home, "central", "customer", "add", "--company", "ACME", "--site", "Kobe", "--type", "multi-user",
                    "--host-name", HOST, "--ip", "10.0.0.5", "--server-container", serial, "--json", *ops).stdout
        customer = json.loads(shown)
        assert customer["server_container"] == serial and customer["server_serial"] is None
        out = run(home, "central", "order", "add", "--product", "42", "--quantity", "5", "--count", "2",
                  "--customer", customer["id"], "--reference", "PO-1", *ops).stdout
        assert "total 2 license(s), 10 seat(s)" in out
        out = run(home, "central", "order", "add", "--product", "42", "--quantity", "3",
                  "--customer", customer["id"], "--reference", "PO-1", *ops).stdout
        assert "total 3 license(s), 13 seat(s) (extends the order)" in out

        # The server's first contact links it; nothing is due yet, and nothing is renewed.
        clock[0] = t0 + HOUR
        out = run(home, "sync", "--central", url).stdout
        assert "nothing to renew" in out and "renewed" not in out
        assert central.get_customer(customer["id"])["server_serial"] == serial
        assert central.get_container(serial)["counter"] == 0
        # Its hourly sync in the last hour of the day brings the first ticket: within 24 h.
        clock[0] = t0 + 23 * HOUR + 1
        out = run(home, "sync", "--central", url).stdout
        assert out.count("added item") == 3, out

        # The wait is set per customer; a later ticket comes after that.
        run(home, "central", "customer", "set", customer["id"], "--auto-activate-after", "2h", *ops)
        run(home, "central", "order", "add", "--product", "42", "--customer", customer["id"], *ops)
        clock[0] += HOUR + 1
        out = run(home, "sync", "--central", url).stdout
        assert out.count("added item") == 1, out
    actions = [e["action"] for e in central.audit(subject=customer["id"])]
    assert "customer.bind" in actions and "customer.update" in actions


def test_a_bad_database_is_one_line(tmp_path: Path) -> None:
    passfile = tmp_path / "pass"
    passfile.write_text("correct horse battery\n")
    run(tmp_path, "vendor", "init", "--firm-code", "6000010", "--name", "Example Firm", "--passphrase-file", str(passfile))
    for db, says in (("mysql://u:secret@127.0.0.1/x", "the scheme 'mysql' is not supported"),
                     ("postgresql://u:secret@127.0.0.1:1/x", "cannot use the database 127.0.0.1:1/x"),
                     (f"sqlite:///{tmp_path}/missing/dir/c.db", "unable to open database file")):
        r = run(tmp_path, "central", "serve", "--db", db, "--passphrase-file", str(passfile), code=2)
        assert r.stderr.startswith("error 1212") and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert "secret" not in r.stderr


def test_host_names_one_rule(central: Central) -> None:
    made = central.create_customer("sales", 0, "ACME", "Kobe", "multi-user", "LicSrv-01.Example.COM", "10.0.0.5")
    assert made["server_host"] == "licsrv-01.example.com"
    for name, says in (("a" * 64, "too long (64 characters; at most 63"), ("a." * 127 + "ab", "too long (256 characters"),
                       ("lic_srv", "only ASCII letters"), ("srv..example", "no empty part")):
        with pytest.raises(LicentiaError) as exc:
            central.create_customer("sales", 0, "ACME", "Kobe", "multi-user", name, "10.0.0.5")
        assert exc.value.code == ErrorCode.HOST_NAME_INVALID and says in exc.value.message, exc.value.message


@sqlite_only
def test_a_tmr_product_through_the_commands(central: Central, tmp_path: Path) -> None:
    """Three upstreams' containers, one group request to central, the group update applied on
    each, the group receipt confirmed: `licentia central ticket activate` and `central receipt`."""
    now = int(time.time())
    central.create_product("ops", now, 42, "CAD Pro TMR", {"units": 100}, tmr=True)
    ticket = central.create_order("sales", now, [{"product_code": 42, "quantity": 3}])["ticket"]
    firm = str(central.firm.firm_code)
    homes = [tmp_path / f"up{i}" for i in (1, 2, 3)]
    serials = [new_container(h) for h in homes]
    requests = []
    for home, serial in zip(homes, serials, strict=True):
        requests.append(str(home / "up.lcrq"))
        run(home, "update", "request", serial, "--firm-code", firm, "-o", requests[-1])
    group = str(tmp_path / "group.lcgr")
    run(homes[0], "update", "group-request", *requests, "-o", group)
    with live(central) as url:
        ops = ("--central", url)
        # one container's own request for a TMR license: refused, with what to do
        r = run(homes[0], "central", "ticket", "activate", ticket, requests[0], "-o", str(tmp_path / "x"), *ops, code=2)
        assert "error 1475" in r.stderr and "group-request" in r.stderr
        out = run(homes[0], "central", "ticket", "activate", ticket, group, "-o", str(tmp_path / "group.lcgu"),
                  *ops).stdout
        assert f"TMR license 1 (license 1 of ticket {ticket}): one group update for three constituents" in out
        receipts = []
        for home, serial in zip(homes, serials, strict=True):
            receipts.append(str(home / "up.receipt"))
            applied = run(home, "update", "apply", str(tmp_path / "group.lcgu"), "--receipt", receipts[-1]).stdout
            assert f"to container {serial} (its part of TMR license 1's group update)" in applied
        shown = run(homes[1], "container", "show", serials[1]).stdout
        assert f"TMR license 1 (one of three constituents: {', '.join(sorted(serials))})" in shown
        partial = str(tmp_path / "partial.lcgc")
        run(homes[0], "update", "group-receipt", *receipts[:2], "-o", partial)
        r = run(homes[0], "central", "receipt", partial, *ops, code=2)
        assert "error 1462" in r.stderr and f"container {serials[2]}: no receipt" in r.stderr
        whole = str(tmp_path / "group.lcgc")
        run(homes[0], "update", "group-receipt", *receipts, "-o", whole)
        out = run(homes[0], "central", "receipt", whole, *ops).stdout
        assert "TMR license 1: all three constituents confirmed" in out
    assert {lic["status"] for lic in central.get_ticket(ticket)["licenses"]} == {"active"}
