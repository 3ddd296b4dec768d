"""The group update of a TMR license through the CLI: a vendor and three upstreams, each its own machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.test_tour import FIRM, Cli
from tests.machines import Machine, build, kvm_guest, with_disk_nic_cpu_replaced, workstation


def _upstream(tmp: Path, name: str, machine: Machine) -> tuple[Cli, str]:
    cli = Cli(tmp / f"{name}-home", build(machine, tmp / f"{name}-machine"))
    return cli, cli.run("container", "create", "--binding", "medium").stdout.strip()


def _requests(ups: list[tuple[Cli, str]], tmp: Path, tag: str) -> list[str]:
    paths = []
    for i, (cli, serial) in enumerate(ups):
        path = tmp / f"{tag}{i}.lcrq"
        cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(path))
        paths.append(str(path))
    return paths


def _refused(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert f"error {code}" in proc.stderr and text in proc.stderr, proc.stderr


def test_group_request_update_apply_and_receipt_across_three_upstreams(tmp_path: Path) -> None:
    vendor = Cli(tmp_path / "vendor-home", build(workstation(), tmp_path / "vendor-machine"))
    pp = ["--passphrase-file", str(tmp_path / "passphrase")]
    (tmp_path / "passphrase").write_text("correct horse battery staple\n")
    vendor.run("vendor", "init", "--firm-code", FIRM, "--name", "Acme", *pp)
    ups = [
        _upstream(tmp_path, "up1", workstation()),
        _upstream(tmp_path, "up2", kvm_guest()),
        _upstream(tmp_path, "up3", with_disk_nic_cpu_replaced(workstation())),
    ]
    serials = [s for _, s in ups]
    reqs = _requests(ups, tmp_path, "a")
    group_req, group_up = str(tmp_path / "group.lcgr"), str(tmp_path / "group.lcgu")

    # a group is three different containers
    _refused(vendor.run("update", "group-request", reqs[0], reqs[0], reqs[1], "-o", group_req, ok=False),
             1460, "three different containers")
    made = vendor.run("update", "group-request", *reqs, "-o", group_req)
    assert f"group request for firm {FIRM}, constituents {', '.join(serials)}" in made.stdout

    plain = vendor.run("vendor", "issue", group_req, "--product", "9", *pp, "-o", group_up, ok=False)
    _refused(plain, 105, "is a TMR group request: answer it with --tmr")
    issued = vendor.run("vendor", "issue", group_req, "--tmr", "--product", "9", "--quantity", "10",
                        "--units", "500", *pp, "-o", group_up)
    assert "TMR license 1: firm 10001, product 9, one group update for three constituents" in issued.stdout
    for serial in serials:
        assert f"container {serial}, step 1, item 1" in issued.stdout

    # a group update altered anywhere is refused, and changes nothing
    data = Path(group_up).read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    (tmp_path / "bad.lcgu").write_bytes(bytes(bad))
    _refused(ups[0][0].run("update", "apply", str(tmp_path / "bad.lcgu"), ok=False), 264, "does not verify")
    # a home that holds none of the constituents has no part to apply
    _refused(vendor.run("update", "apply", group_up, ok=False), 1461, "none of them is here")
    # a part forced onto an upstream that does not hold its container is refused
    wrong = ups[0][0].run("update", "apply", group_up, "--container", serials[1], ok=False)
    _refused(wrong, 201, f"container {serials[1]}")
    assert "applied" not in wrong.stdout

    receipts = []
    for i, (cli, serial) in enumerate(ups):
        receipt = tmp_path / f"up{i + 1}.receipt"
        out = cli.run("update", "apply", group_up, "--receipt", str(receipt)).stdout
        assert f"to container {serial} (its part of TMR license 1's group update)" in out
        assert "added item 1 (product 9)" in out
        receipts.append(str(receipt))
        [item] = json.loads(cli.run("container", "show", serial, "--json").stdout)["items"]
        assert item["tmr_id"] == 1 and item["error"] == 130  # a constituent, not served on its own
        assert item["tmr_constituents"] == sorted(serials)  # the group update names the three
    # applying it again is the ordinary replay refusal
    _refused(ups[0][0].run("update", "apply", group_up, "--receipt", str(tmp_path / "x"), ok=False), 229, "already")

    # one receipt left out: the vendor is told which container
    partial = str(tmp_path / "partial.lcgc")
    vendor.run("update", "group-receipt", *receipts[:2], "-o", partial)
    missing = vendor.run("vendor", "check-receipt", partial, "--update", group_up, ok=False)
    _refused(missing, 1462, f"container {serials[2]}: no receipt")
    assert f"confirmed: container {serials[0]} at step 1" in missing.stdout

    whole = str(tmp_path / "group.lcgc")
    vendor.run("update", "group-receipt", *receipts, "-o", whole)
    checked = vendor.run("vendor", "check-receipt", whole, "--update", group_up)
    assert "TMR license 1: all three constituents confirmed" in checked.stdout

    # the next step: a fresh group, applied by two upstreams; the third's receipt is of step 1
    vendor.run("update", "group-request", *_requests(ups, tmp_path, "b"), "-o", group_req)
    vendor.run("vendor", "issue", group_req, "--tmr", "--product", "11", *pp, "-o", group_up)
    second = []
    for i, (cli, _) in enumerate(ups[:2]):
        receipt = tmp_path / f"up{i + 1}-2.receipt"
        assert "step 2" in cli.run("update", "apply", group_up, "--receipt", str(receipt)).stdout
        second.append(str(receipt))
    vendor.run("update", "group-receipt", *second, receipts[2], "-o", whole)
    stale = vendor.run("vendor", "check-receipt", whole, "--update", group_up, ok=False)
    _refused(stale, 1462, f"container {serials[2]}: the receipt is for step 1; its part of this group update is step 2")
