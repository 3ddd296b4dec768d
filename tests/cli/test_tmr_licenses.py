"""`licentia vendor issue --tmr`: one TMR license, three constituent containers, one TMR id."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_tour import FIRM, Cli, tour

__all__ = ["tour"]  # the fixture, used by name below


def _requests(cli: Cli, tmp: Path, serials: list[str], tag: str) -> list[str]:
    paths = []
    for i, serial in enumerate(serials):
        path = tmp / f"{tag}{i}.lcrq"
        cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(path))
        paths.append(str(path))
    return paths


def test_vendor_issue_tmr_makes_three_identical_constituents_with_consecutive_ids(
    tour: tuple[Cli, str, Path],
) -> None:
    cli, first, tmp = tour
    serials = [first] + [cli.run("container", "create", "--binding", "medium").stdout.strip() for _ in range(2)]
    pp = ["--passphrase-file", str(tmp / "passphrase")]

    outs = [str(tmp / f"a{i}.lcup") for i in range(3)]
    issued = cli.run("vendor", "issue", *_requests(cli, tmp, serials, "a"), "--tmr", "--product", "9",
                     "--quantity", "10", "--units", "500", "--hidden-data", "sealed once", *pp,
                     *[a for o in outs for a in ("-o", o)])
    assert "TMR license 1: firm 10001, product 9, three constituents" in issued.stdout
    for out in outs:
        assert "(product 9)" in cli.run("update", "apply", out).stdout

    items = []
    for serial in serials:
        shown = json.loads(cli.run("container", "show", serial, "--json").stdout)
        [item] = [i for i in shown["items"] if i["product_code"] == 9]
        items.append(item)
        text = cli.run("container", "show", serial).stdout
        assert "TMR license 1 (one of three constituents)" in text
        # an ordinary runtime does not serve a constituent on its own
        assert "error 130" in text
    # identical in every option the vendor signed (the item id is each container's own)
    signed = [{k: v for k, v in i.items() if k not in ("item_id",)} for i in items]
    assert signed[0] == signed[1] == signed[2] and signed[0]["tmr_id"] == 1

    # the next TMR license of the firm takes the next id
    outs2 = [str(tmp / f"b{i}.lcup") for i in range(3)]
    again = cli.run("vendor", "issue", *_requests(cli, tmp, serials, "b"), "--tmr", "--product", "11", *pp,
                    *[a for o in outs2 for a in ("-o", o)])
    assert "TMR license 2:" in again.stdout
    ids = json.loads((cli.home / "vendor" / f"firm-{FIRM}.tmr-ids").read_text())
    assert ids == {"format": "licentia-tmr-ids", "version": 1, "firm_code": int(FIRM), "last": 2}


def test_vendor_issue_tmr_refuses_what_is_not_three_containers(tour: tuple[Cli, str, Path]) -> None:
    cli, first, tmp = tour
    pp = ["--passphrase-file", str(tmp / "passphrase")]
    two = _requests(cli, tmp, [first, first], "t")
    refused = cli.run("vendor", "issue", *two, "--tmr", "--product", "9", *pp, "-o", "x", "-o", "y", ok=False)
    assert refused.returncode == 2 and "three request files" in refused.stderr
    same = _requests(cli, tmp, [first, first, first], "s")
    refused = cli.run("vendor", "issue", *same, "--tmr", "--product", "9", *pp,
                      "-o", str(tmp / "1"), "-o", str(tmp / "2"), "-o", str(tmp / "3"), ok=False)
    assert refused.returncode == 2 and "must be three containers" in refused.stderr
    assert not (tmp / "1").exists()
    assert not (cli.home / "vendor" / f"firm-{FIRM}.tmr-ids").exists()  # no id spent on a refusal
