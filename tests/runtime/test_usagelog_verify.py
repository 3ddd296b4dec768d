"""What `licentia runtime verify-log` proves and what it cannot: an edited entry is named, an
unsigned tail is reported as unproved, a log stripped of its signatures fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.runtime.test_runtime_units import PUBLIC, event, write_log

from licentia.runtime.usagelog import _hash, verify_log


def verify_cmd(tmp_path: Path, path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "licentia.cli.main", "--home", str(tmp_path / "h"), "runtime", "verify-log",
           str(path), "--public-key", PUBLIC.hex()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_edited_entry_is_named_not_the_one_after_it(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 12).close()
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace('"user":"ann"', '"user":"bob"')
    path.write_text("".join(lines))
    report = verify_log([path], PUBLIC)
    assert report.problems[0].startswith("usage.jsonl:5: entry 5 was edited"), report.problems
    done = verify_cmd(tmp_path, path)
    assert done.returncode == 2 and "error 1012 (usage log altered)" in done.stderr and "usage.jsonl:5" in done.stderr


def test_a_removed_line_is_told_apart_from_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 12).close()
    lines = path.read_text().splitlines(keepends=True)
    del lines[5]
    path.write_text("".join(lines))
    problems = verify_log([path], PUBLIC).problems
    assert any("inserted, removed or reordered" in p for p in problems) and not any("was edited" in p for p in problems)


def test_a_log_whose_signatures_were_removed_and_chain_rebuilt_fails(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    write_log(path, 12).close()
    # the forger drops every signed entry, renumbers and re-chains what is left
    prev, seq, out = "0" * 64, 0, []
    for raw in path.read_text().splitlines():
        doc = json.loads(raw)
        if doc["event"] in ("checkpoint", "seal"):
            continue
        seq += 1
        doc["seq"], doc["prev"] = seq, prev
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        prev = _hash(line.encode())
        out.append(line + "\n")
    path.write_text("".join(out))
    report = verify_log([path], PUBLIC)
    assert report.signatures == 0 and not report.ok and "no entry is signed" in report.problems[0]
    done = verify_cmd(tmp_path, path)
    assert done.returncode == 2 and "error 1012" in done.stderr and "intact" not in done.stdout


def test_an_unsigned_tail_is_reported_as_unproved_with_its_length(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    log = write_log(path, 6)  # ends with a checkpoint
    for i in range(3):
        log.record(event(100 + i))
    log.flush()  # three entries written after the last signature, as a running runtime has them
    done = verify_cmd(tmp_path, path)
    assert done.returncode == 0, done.stderr
    assert "the last 3 entries are not signed yet" in done.stdout and "the log is intact" not in done.stdout
    assert verify_log([path], PUBLIC).unsigned_tail == 3
    log.close()
    closed = verify_cmd(tmp_path, path)
    assert closed.returncode == 0 and "the log is intact (signed up to entry" in closed.stdout


def test_a_rewritten_unsigned_tail_is_not_claimed_intact(tmp_path: Path) -> None:
    # a forger rewrites the entries after the last signature and recomputes their hashes: the
    # chain holds, so the verdict must not call those entries proved
    path = tmp_path / "usage.jsonl"
    log = write_log(path, 6)
    for i in range(2):
        log.record(event(100 + i))
    log.flush()
    lines = path.read_text().splitlines()
    signed, tail = lines[:-2], lines[-2:]
    prev = _hash(signed[-1].encode())
    forged = []
    for raw in tail:
        doc = json.loads(raw)
        doc["user"], doc["prev"] = "mallory", prev
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        prev = _hash(line.encode())
        forged.append(line)
    path.write_text("\n".join(signed + forged) + "\n")
    done = verify_cmd(tmp_path, path)
    assert done.returncode == 0 and "the last 2 entries are not signed yet" in done.stdout
    assert "the log is intact" not in done.stdout
    log.close()
