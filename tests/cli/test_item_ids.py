"""An item id names one product for a container's whole life: a removed item's id is never
given again, so usage-log entries and receipts that name an item id stay unambiguous."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli.test_tour import FIRM, Cli, tour

__all__ = ["tour"]  # the fixture, used by name below


def issue(cli: Cli, serial: str, tmp: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    cli.run("update", "request", serial, "--firm-code", FIRM, "-o", str(tmp / f"{name}.lcrq"))
    cli.run("vendor", "issue", str(tmp / f"{name}.lcrq"), *args, "--passphrase-file", str(tmp / "passphrase"),
            "-o", str(tmp / f"{name}.lcup"))
    return cli.run("update", "apply", str(tmp / f"{name}.lcup"), ok=False)


def test_a_removed_items_id_is_not_given_to_the_next_item(tour: tuple[Cli, str, Path]) -> None:
    cli, serial, tmp = tour
    removed = issue(cli, serial, tmp, "remove", "--remove", "1")
    assert removed.returncode == 0 and "removed item 1" in removed.stdout, removed.stderr
    added = issue(cli, serial, tmp, "add", "--product", "8", "--quantity", "1")
    assert added.returncode == 0, added.stderr
    assert "added item 2 (product 8)" in added.stdout
    assert "item 2: firm 10001 product 8" in cli.run("container", "show", serial).stdout


def test_an_update_that_reuses_a_removed_id_for_another_product_is_refused(tour: tuple[Cli, str, Path]) -> None:
    cli, serial, tmp = tour
    assert issue(cli, serial, tmp, "remove", "--remove", "1").returncode == 0
    reused = issue(cli, serial, tmp, "reuse", "--product", "8", "--quantity", "1", "--item-id", "1")
    assert reused.returncode == 2
    assert "error 233" in reused.stderr and "item ids are never reused" in reused.stderr
    assert "product 8" not in cli.run("container", "show", serial).stdout
    # the same product under its old id (a license moved away and back) is still accepted
    back = issue(cli, serial, tmp, "back", "--product", "7", "--quantity", "3", "--item-id", "1")
    assert back.returncode == 0 and "added item 1 (product 7)" in back.stdout, back.stderr
