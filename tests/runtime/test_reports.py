"""Usage reports from the usage log: a real runtime's log through `licentia report`, and
the streaming reader against a plain JSON reading of logs the runtime's writer made."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings, strategies as st
from tests.runtime.harness import Procs, Program, Runtime, Vendor, base_env, make_home, wait_for

from licentia.core.seats import Event, EventKind, Holder, ItemKey, ReleaseReason, Station
from licentia.core.usage import Usage
from licentia.crypto import new_signing_key
from licentia.model import AccessMode, ErrorCode, ProductItem
from licentia.runtime.reports import log_files, read_usage
from licentia.runtime.usagelog import UsageLog


def report(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), "report", *args],
                          env=base_env(), capture_output=True, text=True, timeout=120)


def test_reports_of_a_real_runtime(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    rt = Runtime(procs, home, root)
    env = {"LICENTIA_HOME": str(home)}
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    first = Program(procs, root, env, **opts)
    assert first.granted
    second = Program(procs, root, env, **opts)
    assert second.first["error"] == 212
    first.kill()
    wait_for("the seat to be freed", lambda: rt.sessions() == [])
    third = Program(procs, root, env, **opts)  # the same user gets it soon after: not a true denial
    assert third.granted
    rt.stop()

    usage = report(root, home, "usage", "--csv", str(tmp_path / "usage.csv"))
    assert usage.returncode == 0, usage.stderr
    row = next(line.split() for line in usage.stdout.splitlines() if line.startswith(f"{vendor.firm}:7 "))
    assert row[1:4] == ["2", "1", "1"]  # grants, users, peak seats
    series = list(csv.reader((tmp_path / "usage.csv").open()))
    assert series[0] == ["INTERVAL START (UTC)", "PRODUCT", "PEAK SEATS"] and series[1][2] == "1"

    denials = report(root, home, "denials", "--verify")
    assert denials.returncode == 0, denials.stderr
    assert "log verified" in denials.stdout
    row = next(line.split() for line in denials.stdout.splitlines() if line.startswith(f"{vendor.firm}:7 "))
    assert row[1:4] == ["1", "0", "2"] and "212: 1" in denials.stdout

    empty = report(root, home, "usage", "--from", "2001-01-01", "--to", "2001-02-01")
    assert empty.returncode == 0 and "no seat events in this period" in empty.stdout
    (home / "logs" / "usage.jsonl").write_text(
        (home / "logs" / "usage.jsonl").read_text().replace('"event":"grant"', '"event":"grant" ', 1))
    tampered = report(root, home, "usage", "--verify")
    assert tampered.returncode == 2 and "does not verify" in tampered.stderr


def test_reservations_report_names_reservations_never_used(tmp_path: Path, root: Path) -> None:
    home = tmp_path / "home"
    write_log(home / "logs", [
        ("grant", 100.0, 0, 0, "support"), ("grant", 110.0, 1, 0, "support"), ("release", 200.0, 0, 0, None),
        ("grant", 300.0, 2, 1, None), ("release", 400.0, 1, 0, None),
    ])
    for name, group, seats in (("support", "support", "3"), ("qa", "qa", "2")):
        done = subprocess.run([sys.executable, "-m", "licentia.cli.main", "--home", str(home), "acl", "add", name,
                               "--scope", "product 10001:7", "--group", group, "--reserve", seats],
                              env=base_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    out = report(root, home, "reservations", "--csv", str(tmp_path / "r.csv"))
    assert out.returncode == 0, out.stderr
    rows = {r[0]: r for r in csv.reader((tmp_path / "r.csv").open())}
    assert rows["support"][2:6] == ["3", "2", "2", "1"]  # reserved, grants, peak, unused at peak
    assert rows["qa"][2:6] == ["2", "0", "0", "2"]
    assert "never used in this period: qa" in out.stdout


# -- the streaming reader against plain JSON --------------------------------------------------

USERS = ["alice", 'bob "the" builder', "CORP\\carol", "dörte"]
KEYS = [ItemKey("130-1", 10001, 7, 1), ItemKey("130-1", 10001, 7, 2), ItemKey("130-2", 10002, 1, 1)]


def holder(u: int, local: bool) -> Holder:
    if local:
        return Holder.local(Station("pc"), 1000 + u, 1.0, program="p", user=USERS[u], host="pc")
    return Holder.network(f"rt-{u}", program="p", user=USERS[u], host=f"host-{u}")


def write_log(logs: Path, steps: list[tuple[str, float, int, int, str | None]], rotate: int = 1 << 20) -> None:
    """(event, at, handle or user index, key index, charge) → a log written by the runtime's writer."""
    log = UsageLog(logs / "usage.jsonl", new_signing_key(), rotate_bytes=rotate)
    used = [0] * len(KEYS)
    owner: dict[int, tuple[int, int]] = {}
    for kind, at, n, k, charge in steps:
        if kind == "grant":
            used[k] += 1
            owner[n] = (n % len(USERS), k)
            h = holder(n % len(USERS), n % 2 == 0)
            ev = Event(EventKind.GRANT, at, KEYS[k], AccessMode.PER_ACCESS, Station("pc"), h, n, used[k])
            if charge:
                log.record(ev, {"charge": charge})
            else:
                log.record(ev)
        elif kind == "release":
            u, k = owner.pop(n)
            used[k] -= 1
            log.record(Event(EventKind.RELEASE, at, KEYS[k], AccessMode.PER_ACCESS, Station("pc"),
                             holder(u, u % 2 == 0), n, used[k], ReleaseReason.PROGRAM))
        else:
            log.record(Event(EventKind.DENY, at, KEYS[k], AccessMode.PER_ACCESS, Station("pc"),
                             holder(n, n % 2 == 1), None, used[k], None, ErrorCode.NO_MORE_LICENSES))
        log.note({"event": "problem", "detail": "noise between the seat events"}) if at % 7 == 0 else None
        if log.pending > 50:
            log.flush()
    log.close()


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, float, int, int, str | None]]:
    steps: list[tuple[str, float, int, int, str | None]] = []
    open_handles: list[int] = []
    at = 1000.0
    handle = 0
    for _ in range(draw(st.integers(0, 120))):
        at += draw(st.sampled_from([0.5, 30.0, 400.0, 5000.0]))
        choice = draw(st.sampled_from(["grant", "grant", "release", "deny"]))
        if choice == "release" and open_handles:
            steps.append(("release", at, open_handles.pop(draw(st.integers(0, len(open_handles) - 1))), 0, None))
        elif choice == "deny":
            steps.append(("deny", at, draw(st.integers(0, 3)), draw(st.integers(0, 2)), None))
        else:
            handle += 1
            open_handles.append(handle)
            steps.append(("grant", at, handle, draw(st.integers(0, 2)), draw(st.sampled_from([None, "support"]))))
    return steps


@settings(max_examples=25)
@given(histories(), st.sampled_from([None, 5000.0]), st.sampled_from([None, 60000.0]))
def test_the_reader_agrees_with_plain_json(steps: list[tuple[str, float, int, int, str | None]],
                                           start: float | None, end: float | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        write_log(logs, steps, rotate=4096)
        paths = log_files(logs)
        usage = read_usage(paths, Usage(start=start, end=end, interval=3600.0))
        lo, hi = start or float("-inf"), end or float("inf")
        seats: dict[tuple[int, int], int] = {}
        items: dict[tuple[str, int, int, int], int] = {}
        peak: dict[tuple[int, int], int] = {}
        grants: dict[tuple[int, int], int] = {}
        denials: dict[tuple[int, int], int] = {}
        per_user: dict[str, int] = {}
        rules: dict[str, int] = {}
        for path in paths:
            for line in path.read_text().splitlines():
                doc = json.loads(line)
                if doc["event"] not in ("grant", "release", "deny"):
                    continue
                prod = (doc["firm"], doc["product"])
                ik = (doc["container"], doc["firm"], doc["product"], doc["item"])
                seats[prod] = seats.get(prod, 0) + doc["used"] - items.get(ik, 0)
                items[ik] = doc["used"]
                if not lo <= doc["at"] < hi:
                    continue
                peak[prod] = max(peak.get(prod, 0), seats[prod])
                if doc["event"] == "grant":
                    grants[prod] = grants.get(prod, 0) + 1
                    per_user[doc["user"]] = per_user.get(doc["user"], 0) + 1
                    if doc.get("charge"):
                        rules[doc["charge"]] = rules.get(doc["charge"], 0) + 1
                elif doc["event"] == "deny":
                    denials[prod] = denials.get(prod, 0) + 1
        got = usage.products
        assert {p: u.peak for p, u in got.items() if u.peak} == {p: v for p, v in peak.items() if v}
        assert {p: u.grants for p, u in got.items() if u.grants} == grants
        assert {p: u.denials for p, u in got.items() if u.denials} == denials
        assert {json.loads(b'"' + k + b'"'): t.grants for k, t in usage.per_user.items() if t.grants} == per_user
        assert {k: t.grants for k, t in usage.per_rule.items() if t.grants} == rules
