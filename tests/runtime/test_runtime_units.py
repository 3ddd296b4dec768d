"""Runtime parts on their own: usage log chain and signatures, configuration, group commit,
process identity, the server search list."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st
from tests.runtime.harness import Vendor, make_home, open_container, put_items

from licentia.core.seats import Event, EventKind, Holder, ItemKey, ReleaseReason, Station
from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import AccessMode, ErrorCode, LicentiaError, ProductItem
from licentia.runtime import config, procs, searchlist
from licentia.runtime.commit import ContainerWriter
from licentia.runtime.licenses import decrement_op
from licentia.runtime.usagelog import UsageLog, verify_log

KEY = new_signing_key()
PUBLIC = signing_public_key(KEY)


def event(i: int, kind: EventKind = EventKind.GRANT) -> Event:
    holder = Holder.local(Station("h1"), 1000 + i, 5.0, program="prog", user="ann", host="h1")
    return Event(kind, 1_700_000_000.0 + i, ItemKey("130-1", 10001, 7, 1), AccessMode.PER_ACCESS, Station("h1"),
                 holder, i, 1, ReleaseReason.PROGRAM if kind is EventKind.RELEASE else None,
                 ErrorCode.NO_MORE_LICENSES if kind is EventKind.DENY else None)


def write_log(path: Path, n: int, *, rotate_bytes: int = 16 << 20) -> UsageLog:
    log = UsageLog(path, KEY, rotate_bytes=rotate_bytes)
    for i in range(n):
        ev = event(i, [EventKind.GRANT, EventKind.DENY, EventKind.RELEASE][i % 3])
        if i % 2:
            log.record(ev)
        else:  # the runtime's hot path: the line's template looked up by the caller
            log.record_in(log.template(ev), ev)
        if i % 7 == 0:
            log.flush()
    log.checkpoint()
    return log


def test_usage_log_verifies_and_carries_what_reports_need(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 20).close()
    report = verify_log([path], PUBLIC)
    assert report.ok, report.problems
    assert report.entries == 21 and report.signatures == 1 and report.unsigned_tail == 0
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    deny = next(e for e in entries if e["event"] == "deny")
    assert deny["code"] == 212 and deny["firm"] == 10001 and deny["product"] == 7
    assert {"at", "station", "user", "host", "program", "pid"} <= set(deny)


def test_a_line_with_its_template_given_is_the_line_the_log_makes_itself(tmp_path: Path) -> None:
    events = [event(i, kind) for i in range(6) for kind in EventKind]
    plain, given = UsageLog(tmp_path / "plain.jsonl", KEY), UsageLog(tmp_path / "given.jsonl", KEY)
    for ev in events:
        plain.record(ev)
        given.record_in(given.template(ev), ev)
    plain.flush()
    given.flush()
    assert (tmp_path / "plain.jsonl").read_bytes() == (tmp_path / "given.jsonl").read_bytes()
    plain.close()
    given.close()


@given(st.text(max_size=12), st.sampled_from(list(EventKind)))
def test_a_template_with_extra_fields_makes_the_line_record_with_them_makes(charge: str, kind: EventKind) -> None:
    # a seat charged to an access-list rule: its grant line carries "charge"
    with tempfile.TemporaryDirectory() as tmp:
        plain, given_ = UsageLog(Path(tmp) / "plain.jsonl", KEY), UsageLog(Path(tmp) / "given.jsonl", KEY)
        for i in range(3):
            ev = event(i, kind)
            plain.record(ev, {"charge": charge})
            given_.record_in(given_.template(ev, {"charge": charge}), ev)
        plain.flush()
        given_.flush()
        # the same fields in the same order ("at" written with three decimals, so "prev" differs)
        slow = [json.loads(line) for line in (Path(tmp) / "plain.jsonl").read_bytes().splitlines()]
        fast = [json.loads(line) for line in (Path(tmp) / "given.jsonl").read_bytes().splitlines()]
        for a, b in zip(slow, fast, strict=True):
            assert abs(a.pop("at") - b.pop("at")) < 0.0011 and a.pop("prev") and b.pop("prev")
            assert a == b and list(a) == list(b) and b["charge"] == charge
        plain.close()
        given_.close()


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "swap", "resign"])
def test_an_edited_log_is_detected(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 12).close()
    lines = path.read_text().splitlines(keepends=True)
    if tamper == "edit":
        lines[4] = lines[4].replace('"user":"ann"', '"user":"bob"')
    elif tamper == "delete":
        del lines[5]
    elif tamper == "insert":
        lines.insert(3, lines[3])
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines))
    if tamper == "resign":
        # rewrite the whole log consistently, signed with another key: the chain holds, the key does not
        other = new_signing_key()
        forged = UsageLog(tmp_path / "forged.jsonl", other)
        for i in range(12):
            forged.record(event(i))
        forged.close()
        path = tmp_path / "forged.jsonl"
        assert verify_log([path]).ok
    report = verify_log([path], PUBLIC)
    assert not report.ok


def test_rotation_seals_and_the_chain_continues_across_files(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    log = write_log(path, 60, rotate_bytes=4096)
    log.close()
    rotated = sorted(tmp_path.glob("usage-*.jsonl"))
    assert rotated
    for old in rotated:
        assert json.loads(old.read_text().splitlines()[-1])["event"] == "seal"
    report = verify_log([*rotated, path], PUBLIC)
    assert report.ok, report.problems
    assert report.signatures >= len(rotated) + 1
    assert len(rotated) >= 2
    assert not verify_log([rotated[0], *rotated[2:], path], PUBLIC).ok  # a file left out breaks the chain


def test_log_continues_after_a_crash_cut_a_line(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 5).close()
    with open(path, "ab") as f:
        f.write(b'{"seq":7,"event":"gra')  # a write cut short by a crash
    log = UsageLog(path, KEY)
    log.record(event(9))
    log.close()
    assert verify_log([path], PUBLIC).ok


def test_verify_log_command_exits_2_on_an_edited_log(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 6).close()
    cmd = [sys.executable, "-m", "licentia.cli.main", "--home", str(tmp_path / "h"), "runtime", "verify-log", str(path),
           "--public-key", PUBLIC.hex()]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "the log is intact" in ok.stdout
    path.write_text(path.read_text().replace('"pid":1002', '"pid":4242'))
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "altered" in bad.stderr


# -- configuration --


def test_config_defaults_file_flags_and_limits(tmp_path: Path) -> None:
    defaults = config.RuntimeConfig()
    assert {s.name: s.default for s in config.SETTINGS} == {f.name: getattr(defaults, f.name) for f in fields(defaults)}
    (tmp_path / "runtime.toml").write_text("[network]\nenabled = true\nport = 23000\nclient_timeout = 30\n")
    cfg = config.build(tmp_path, {"network_port": 24000})
    assert cfg.network and cfg.network_port == 24000 and cfg.client_timeout == 30.0
    (tmp_path / "runtime.toml").write_text("[network]\nclient_timeout = 2\n")
    with pytest.raises(LicentiaError) as e:
        config.build(tmp_path)
    assert "at least 5" in e.value.message
    (tmp_path / "runtime.toml").write_text("[network]\nportt = 1\n")
    with pytest.raises(LicentiaError) as e:
        config.build(tmp_path)
    assert "unknown setting" in e.value.message
    # the commented default file parses to the defaults
    settings_only = re.sub(r"(?m)^# (\w+ = )", r"\1", config.default_file())
    (tmp_path / "runtime.toml").write_text(settings_only)
    assert config.build(tmp_path) == defaults


# -- group commit --


def test_group_commit_batches_concurrent_decrements_into_few_transactions(
    tmp_path: Path, root: Path, vendor: Vendor
) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, units=1000)])
    results = {}
    for group in (True, False):
        container = open_container(home, root, serial)
        writer = ContainerWriter(container, group=group)

        async def run(w: ContainerWriter = writer) -> list[object]:
            ops = [w.submit(decrement_op(vendor.firm, 1, 1, int(time.time()))) for _ in range(40)]
            ops.append(w.submit(decrement_op(vendor.firm, 1, 10_000, int(time.time()))))  # refused alone
            return await asyncio.gather(*ops, return_exceptions=True)

        out = asyncio.run(run())
        writer.close()
        assert isinstance(out[-1], LicentiaError) and out[-1].code is ErrorCode.NOT_ENOUGH_UNITS
        assert sorted(out[:-1], reverse=True) == out[:-1]  # each saw the counter after its own decrement
        results[group] = (writer.transactions, writer.operations)
    assert open_container(home, root, serial).read().find(vendor.firm, 7)[0].state.units_remaining == 1000 - 80
    assert results[False] == (41, 41)
    assert results[True][1] == 41 and results[True][0] <= 5


def test_group_commit_keeps_batches_full_for_clients_in_a_closed_loop(tmp_path: Path, root: Path,
                                                                     vendor: Vendor) -> None:
    """Clients that send their next decrement when the last is answered come back one by one;
    the writer waits for as many as its last batch held, so every round is one transaction."""
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, units=1000)])
    container = open_container(home, root, serial)
    clients, rounds = 6, 4

    async def run() -> tuple[int, list[list[int]]]:
        # a long max_wait: the test must not depend on how fast this machine is
        writer = ContainerWriter(container, max_wait=30.0)

        async def client(n: int) -> list[int]:
            seen = []
            for _ in range(rounds):
                seen.append(await writer.submit(decrement_op(vendor.firm, 1, 1, int(time.time())), lambda r: r))
                await asyncio.sleep(0.002 * n)  # the answers reach the clients at different times
            return seen

        try:
            seen = await asyncio.gather(*(client(n) for n in range(clients)))
        finally:
            writer.close()
        return writer.transactions, seen

    transactions, seen = asyncio.run(run())
    assert transactions == rounds
    everything = sorted(u for s in seen for u in s)
    assert everything == list(range(1000 - clients * rounds, 1000))  # every decrement counted once


@pytest.fixture(scope="session")
def units_content(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Any]:
    """(firm, content) of a container with unit counters, made once for the property below."""
    base = tmp_path_factory.mktemp("units")
    vendor = Vendor(base / "vendor")
    later = int(time.time()) + 50_000
    serial = make_home(base / "home", root, vendor, [ProductItem(product_code=7, units=20),
                                                     ProductItem(product_code=8, units=6, expires_at=later)])
    return vendor.firm, open_container(base / "home", root, serial).read()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.lists(st.tuples(st.integers(-1, 9), st.integers(-200_000, 200_000)),
                                            min_size=1, max_size=12))
def test_decrements_run_together_as_they_would_one_by_one(units_content: tuple[int, Any], item_id: int,
                                                          steps: list[tuple[int, int]]) -> None:
    from licentia.runtime.licenses import DecrementOp

    firm, content = units_content
    start = content.clock.high_water
    ops = [DecrementOp(firm, item_id, units, start + offset) for units, offset in steps]
    alone, one_by_one = content, []
    for op in ops:
        try:
            alone, value = op(alone)
        except LicentiaError as exc:
            one_by_one.append((False, exc.code))
        else:
            one_by_one.append((True, value))
    together, results = DecrementOp.run(content, ops)
    assert [(ok, v if ok else v.code) for ok, v in results] == one_by_one
    assert together == alone


def test_a_held_container_sees_changes_made_elsewhere_and_tampering(tmp_path: Path, root: Path, vendor: Vendor) -> None:
    """The runtime keeps a container open and reuses its content while the file is unchanged;
    a change by another process (`licentia update apply`) or a tampered file is still seen."""
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, units=1000)])
    held = open_container(home, root, serial)

    async def run() -> None:
        writer = ContainerWriter(held)
        try:
            assert await writer.submit(decrement_op(vendor.firm, 1, 1, int(time.time()))) == 999
            assert await writer.submit(decrement_op(vendor.firm, 1, 1, int(time.time()))) == 998
            # another process adds an item to the same file
            put_items(open_container(home, root, serial), vendor, [ProductItem(product_code=8, units=5)], first_id=2)
            assert held.read().find(vendor.firm, 8)[0].state.units_remaining == 5
            assert await writer.submit(decrement_op(vendor.firm, 2, 2, int(time.time()))) == 3
            assert await writer.submit(decrement_op(vendor.firm, 1, 1, int(time.time()))) == 997
        finally:
            writer.close()

    asyncio.run(run())
    again = open_container(home, root, serial).read()
    assert again.find(vendor.firm, 7)[0].state.units_remaining == 997
    assert again.find(vendor.firm, 8)[0].state.units_remaining == 3
    data = bytearray(held.path.read_bytes())
    data[len(data) // 2] ^= 1
    held.path.write_bytes(bytes(data))
    with pytest.raises(LicentiaError) as e:
        held.read()
    assert e.value.code is ErrorCode.LICENSE_INVALID
    with pytest.raises(LicentiaError):
        held.transact(decrement_op(vendor.firm, 1, 1, int(time.time())))


def test_proofs_are_the_container_keys_signatures(tmp_path: Path, root: Path, vendor: Vendor) -> None:
    from licentia.crypto import sign, verify
    from licentia.runtime.proofs import make_proof
    from licentia.sdk.proof import proof_message

    serial = make_home(tmp_path / "home", root, vendor, [ProductItem(product_code=7)])
    content = open_container(tmp_path / "home", root, serial).read()
    for handle in (1, 2**40):
        nonce = os.urandom(32)
        message = proof_message(nonce, handle, str(content.serial), vendor.firm, 1, None, 1_900_000_000)
        proof = make_proof(content, nonce, handle, vendor.firm, 1, None, 1_900_000_000)
        verify(signing_public_key(content.sign_key), message, proof)
        assert proof == sign(content.sign_key, message)  # Ed25519 signatures are deterministic


# -- processes --


def test_process_identity_includes_the_start_time(tmp_path: Path) -> None:
    pid, start = procs.own_identity()
    assert pid == os.getpid() and start > 0
    assert procs.alive(pid, start)
    assert not procs.alive(pid, start + 1)  # same PID, another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    assert procs.start_time(child.pid) is None
    fake = tmp_path / "proc" / "42"
    fake.mkdir(parents=True)
    (fake / "stat").write_bytes(b"42 (a b) c) S " + b" ".join(str(i).encode() for i in range(4, 30)))
    assert procs.start_time(42, tmp_path / "proc") == 22


@given(st.lists(st.sampled_from(["a.example:1", "b.example", "[::1]:22350", "10.0.0.5:22350"]), max_size=6))
def test_server_search_list_keeps_order_and_no_duplicates(tmp_path_factory: pytest.TempPathFactory,
                                                         adds: list[str]) -> None:
    path = tmp_path_factory.mktemp("list") / "servers.json"
    for a in adds:
        searchlist.add(path, a)
    listed = searchlist.read_list(path)
    assert len(listed) == len(set(listed))
    expected: list[str] = []
    for a in adds:
        n = searchlist.normalise(a)
        if n in expected:
            expected.remove(n)
        expected.append(n)
    assert listed == expected
    if listed:
        searchlist.remove(path, listed[0])
        assert searchlist.read_list(path) == listed[1:]


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20), st.sampled_from(list(EventKind)),
       st.one_of(st.none(), st.integers(0, 2**40)), st.integers(1, 2**40),
       st.floats(1e9, 4e9, allow_nan=False) | st.integers(10**9, 4 * 10**9).map(lambda s: s + 0.0005))
@example("100% %s %d %%", "%(x)s", "h%", EventKind.DENY, 5, 1, 1_700_000_000.9996)
def test_the_fast_log_formatter_writes_what_json_would(program: str, user: str, host: str, kind: EventKind,
                                                       handle: int | None, seq: int, at: float) -> None:
    from licentia.runtime.usagelog import _Formatter, event_fields

    holder = Holder.local(Station(host or "h", "", user), 7, 1.0, program=program, user=user, host=host)
    ev = event(1, kind)._replace(holder=holder, station=holder.process.station if holder.process else Station("h"),
                                 handle=handle, at=at)
    formatter = _Formatter()
    prev = os.urandom(32).hex()
    for _ in range(2):  # the template made, then the template kept
        raw = formatter.line(ev, seq, prev)
        fast = json.loads(raw)
        slow = {"seq": seq, **event_fields(ev), "prev": prev}
        # "at" has exactly three decimals, the nearest millisecond (json.dumps would print round(at, 3))
        written = re.search(rb'"at":(\d+)\.(\d{3}),', raw)
        assert written is not None and abs(int(written[1]) * 1000 + int(written[2]) - at * 1000) <= 0.5 + 1e-3
        assert abs(fast.pop("at") - slow.pop("at")) < 0.0011  # they may round a tie apart
        assert fast == slow and list(fast) == list(slow)
