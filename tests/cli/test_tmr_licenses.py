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
    requests = _requests(cli, tmp, serials, "a")
    ids_file = cli.home / "vendor" / f"firm-{FIRM}.tmr-ids"

    # what is not three containers is refused, and spends no TMR id
    two = cli.run("vendor", "issue", *requests[:2], "--tmr", "--product", "9", *pp, "-o", "x", "-o", "y", ok=False)
    assert two.returncode == 2 and "three request files" in two.stderr
    same = cli.run("vendor", "issue", requests[0], requests[0], requests[1], "--tmr", "--product", "9", *pp,
                   "-o", str(tmp / "1"), "-o", str(tmp / "2"), "-o", str(tmp / "3"), ok=False)
    assert same.returncode == 2 and "must be three containers" in same.stderr
    assert not (tmp / "1").exists() and not ids_file.exists()

    outs = [str(tmp / f"a{i}.lcup") for i in range(3)]
    issued = cli.run("vendor", "issue", *requests, "--tmr", "--product", "9", "--quantity", "10", "--units", "500",
                     "--hidden-data", "sealed once", *pp, *[a for o in outs for a in ("-o", o)])
    assert "TMR license 1: firm 10001, product 9, three constituents" in issued.stdout
    for out in outs:
        assert "(product 9)" in cli.run("update", "apply", out).stdout

    items = []
    for serial in serials:
        shown = json.loads(cli.run("container", "show", serial, "--json").stdout)
        [item] = [i for i in shown["items"] if i["product_code"] == 9]
        items.append(item)
    # identical in every option the vendor signed (the item id is each container's own)
    signed = [{k: v for k, v in i.items() if k != "item_id"} for i in items]
    assert signed[0] == signed[1] == signed[2] and signed[0]["tmr_id"] == 1
    assert signed[0]["tmr_constituents"] == sorted(serials)  # the vendor names the three
    # an ordinary runtime or container does not serve a constituent on its own
    assert all(i["error"] == 130 for i in items)
    text = cli.run("container", "show", serials[1]).stdout
    assert f"TMR license 1 (one of three constituents: {', '.join(sorted(serials))})" in text and "error 130" in text

    # the next TMR license of the firm takes the next id
    outs2 = [str(tmp / f"b{i}.lcup") for i in range(3)]
    again = cli.run("vendor", "issue", *requests, "--tmr", "--product", "11", *pp,
                    *[a for o in outs2 for a in ("-o", o)])
    assert "TMR license 2:" in again.stdout
    assert json.loads(ids_file.read_text()) == {
        "format": "licentia-tmr-ids", "version": 1, "firm_code": int(FIRM), "last": 2,
    }
