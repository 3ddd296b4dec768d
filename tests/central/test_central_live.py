"""Central on a real socket (uvicorn on 127.0.0.1) over SQLite and PostgreSQL: the online
round trip through the HTTP client, concurrent activations that must not hand out a license
twice, and the whole vendor-and-user story through the `licentia` command."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from central_helpers import Box, live
from sqlalchemy import select

from licentia.central.client import CentralClient
from licentia.central.db import Activation
from licentia.central.service import BUSY, Central
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.tls import client_context, fingerprint


def test_online_round_trip_over_a_socket(central: Central) -> None:
    token = central.ensure_admin_token(int(time.time()))
    with live(central) as url, CentralClient(url, token=token) as admin, CentralClient(url) as user:
        assert user.health()["firm_code"] == central.firm.firm_code
        admin.call("POST", "/api/products", {"product_code": 7, "name": "Suite", "template": {"checkpoint_period": 86400}})
        ticket = admin.call("POST", "/api/orders", {"lines": [{"product_code": 7, "count": 2}]})["ticket"]
        box, other = Box.new(), Box.new()
        now = int(time.time())
        update, info = user.activate(ticket, box.request(now))
        assert info["counter"] == 1
        assert user.receipt(box.apply(update, now))["confirmed"]
        assert {lic["status"] for lic in user.ticket(ticket)["licenses"]} == {"active"}
        update, _ = user.sync(box.request(now))
        user.receipt(box.apply(update, now))
        update, _ = user.return_licenses(ticket, box.request(now))
        user.receipt(box.apply(update, now))
        assert box.items() == {}
        update, _ = user.activate(ticket, other.request(now))
        user.receipt(other.apply(update, now))
        with pytest.raises(LicentiaError) as exc:
            user.activate(ticket, box.request(now))
        assert exc.value.code == ErrorCode.LICENSE_NOT_AVAILABLE
        assert "active in" in exc.value.message
        with pytest.raises(LicentiaError) as exc:
            user.activate("22222-22222-22222-22222-22222", box.request(now))
        assert exc.value.code in (ErrorCode.TICKET_INVALID, ErrorCode.TICKET_NOT_FOUND)


def test_concurrent_activations_never_hand_out_a_license_twice(central: Central) -> None:
    token = central.ensure_admin_token(int(time.time()))
    with live(central) as url, CentralClient(url, token=token) as admin:
        admin.call("POST", "/api/products", {"product_code": 8, "name": "Seat"})
        ticket = admin.call("POST", "/api/orders", {"lines": [{"product_code": 8, "count": 3}]})["ticket"]
        ids = [lic["id"] for lic in admin.ticket(ticket)["licenses"]]
        boxes = [Box.new() for _ in range(8)]

        def attempt(i: int) -> str:
            with CentralClient(url) as user:
                try:
                    user.activate(ticket, boxes[i].request(), [ids[i % 3]])
                    return "ok"
                except LicentiaError as exc:
                    return exc.code.name

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(attempt, range(8)))
    assert results.count("ok") == 3, results
    assert set(results) == {"ok", "LICENSE_NOT_AVAILABLE"}
    with central.db.transaction() as s:
        busy = list(s.execute(select(Activation).where(Activation.state.in_(BUSY))).scalars())
    assert sorted(a.license_id for a in busy) == sorted(ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_vendor_and_user_story_through_the_command(tmp_path: Path) -> None:
    """Keystore → central serve → product, customer, order → container → activate → return
    (on the default SQLite database; the PostgreSQL path is the same code behind --db)."""
    exe = [sys.executable, "-m", "licentia.cli.main"]
    home, user_home = tmp_path / "vendor-home", tmp_path / "user-home"
    env = dict(os.environ)
    passfile = tmp_path / "pass"
    passfile.write_text("correct horse battery\n")

    def run(*args: str, home_dir: Path = home, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*exe, "--home", str(home_dir), *args], capture_output=True, text=True, env=env, timeout=120)
        if check:
            assert r.returncode == 0, r.stderr + r.stdout
        return r

    run("vendor", "init", "--firm-code", "6000010", "--name", "Example Firm", "--passphrase-file", str(passfile))
    port = _free_port()
    url = f"https://127.0.0.1:{port}"  # central serves HTTPS with its own certificate; commands pin it
    server = subprocess.Popen(
        [*exe, "--home", str(home), "central", "serve", "--port", str(port), "--passphrase-file", str(passfile)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        while True:  # wait until it answers (or exits)
            if server.poll() is not None:
                raise AssertionError(server.stdout.read() if server.stdout else "central exited")
            try:
                pin = fingerprint(ssl.PEM_cert_to_DER_cert((home / "central" / "tls" / "central.crt").read_text()))
                with CentralClient(url, timeout=2, verify=client_context(fingerprint=pin)) as c:
                    c.health()
                break
            except (LicentiaError, OSError, ValueError):
                time.sleep(0.05)
        token_file = home / "central" / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        ops = ("--central", url)
        run("central", "product", "add", "42", "CAD Pro", "--template", '{"feature_map": 3}', *ops)
        out = run("central", "customer", "add", "--company", "ACME", "--site", "Osaka", "--type", "multi-user",
                  "--host-name", "lic_server", "--ip", "10.0.0.5", *ops, check=False)
        assert out.returncode == 2 and "ASCII letters, digits and hyphens" in out.stderr
        ticket = run("central", "order", "add", "--product", "42", "--quantity", "5", *ops).stdout.split()[1].rstrip(":")
        serial = run("container", "create", home_dir=user_home).stdout.strip()
        out = run("activate", ticket, "--central", url, home_dir=user_home)
        assert "receipt confirmed" in out.stdout and "added item" in out.stdout
        shown = run("container", "show", serial, "--json", home_dir=user_home).stdout
        assert '"product_code": 42' in shown
        status = run("central", "ticket", "show", ticket, "--json", *ops).stdout
        assert '"status": "active"' in status and serial in status
        out = run("return", ticket, "--central", url, home_dir=user_home)
        assert "removed item" in out.stdout
        assert '"status": "available"' in run("central", "ticket", "show", ticket, "--json", *ops).stdout
        run("central", "container", "blacklist", serial, "--reason", "stolen", *ops)
        out = run("sync", "--central", url, home_dir=user_home, check=False)
        assert out.returncode == 2 and "locked all items" in out.stdout and "blacklist" in out.stderr
        exported = tmp_path / "blacklist.lcbl"
        run("central", "blacklist", "export", "-o", str(exported), "--passphrase-file", str(passfile))
        assert exported.read_bytes()[:4] == b"LCBL"
        audit = run("central", "api", "GET", "/api/audit", *ops).stdout
        assert "blacklist.export" in audit and "blacklist.hit" in audit
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def vendor_hook(answers: list[dict[str, object]]) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """The vendor's approval service: a real HTTP server answering from `answers` in turn."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            calls.append(json.loads(self.rfile.read(length)))
            body = json.dumps(answers[min(len(calls), len(answers)) - 1]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/approve", calls
    finally:
        server.shutdown()
        server.server_close()


def test_replacement_beyond_policy_asks_the_vendors_hook(central: Central) -> None:
    from central_helpers import T0

    answers: list[dict[str, object]] = [{"approve": True, "reason": "known customer"}, {"approve": False, "reason": "too many"}]
    with vendor_hook(answers) as (hook_url, calls):
        central.create_product("ops", T0, 9, "Hooked", {}, {"replace": {"allowed": False}, "approval_hook": hook_url})
        ticket = central.create_order("sales", T0, [{"product_code": 9}])["ticket"]
        boxes = [Box.new() for _ in range(3)]

        def activate(box: Box) -> None:
            issued = central.activate(ticket, box.request(), T0)
            central.confirm_receipt(box.apply(issued.update), T0)

        activate(boxes[0])
        result = central.request_replacement(ticket, boxes[0].serial, T0 + 10)
        assert result["replacements"][0]["state"] == "approved"
        assert result["replacements"][0]["decided_by"] == "hook"
        activate(boxes[1])
        with pytest.raises(LicentiaError) as exc:
            central.request_replacement(ticket, boxes[1].serial, T0 + 20)
        assert exc.value.code == ErrorCode.REPLACEMENT_REFUSED and "too many" in exc.value.message
        assert [c["old_serial"] for c in calls] == [boxes[0].serial, boxes[1].serial]
        assert calls[0]["product_code"] == 9 and calls[0]["ticket"] == ticket
    # the hook is gone now: the request waits for an operator, who approves it by hand
    with pytest.raises(LicentiaError) as exc:
        central.request_replacement(ticket, boxes[1].serial, T0 + 30)
    assert exc.value.code == ErrorCode.REPLACEMENT_PENDING
    pending = central.list_replacements("pending")
    assert len(pending) == 1
    central.approve_replacement("token:ops", T0 + 40, pending[0]["id"])
    activate(boxes[2])
    actions = [e["action"] for e in central.audit()]
    assert actions.count("replacement.approve") == 2 and "replacement.hook-failed" in actions
