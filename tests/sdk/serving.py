"""A runtime process serving a home of its own, with the environment a protected program
finds it through (LICENTIA_HOME): what the SDK tests run against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.harness import Procs, Runtime, Vendor, machine, make_home

import licentia
from licentia.model import ProductItem


class Env:
    def __init__(self, home: Path, root: Path, vendor: Vendor, serial: str, runtime: Runtime) -> None:
        self.home, self.root, self.vendor, self.serial, self.runtime = home, root, vendor, serial, runtime

    def take(self, product: int = 7, **kw: Any) -> licentia.License:
        return licentia.access(self.vendor.firm, product, firm_key=self.vendor.public_file, **kw)


def serve(base: Path, items: list[ProductItem]) -> Iterator[Env]:
    """A fresh machine, vendor and home holding `items`, and a runtime serving it until
    the generator is closed."""
    root = machine(base / "machine")
    vendor = Vendor(base / "vendor")
    home = base / "home"
    serial = make_home(home, root, vendor, items)
    procs = Procs()
    mp = pytest.MonkeyPatch()
    try:
        runtime = Runtime(procs, home, root)
        mp.setenv("LICENTIA_HOME", str(home))
        mp.delenv("LICENTIA_RUNTIME", raising=False)
        mp.delenv("LICENTIA_SERVER", raising=False)
        yield Env(home, root, vendor, serial, runtime)
    finally:
        mp.undo()
        procs.close()
