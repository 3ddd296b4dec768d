"""The firm's shipped blacklist, passed to `licentia.access(blacklist=...)`: a real runtime
and real program processes. A listed container is refused with 1213 at once, or once the
delayed lock is due; its seat goes back; a list not signed by the firm is refused (1211)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.runtime.harness import Procs, Program, Runtime, Vendor, make_home

from licentia.core.blacklist import DAY, BlacklistEntry, make_blacklist
from licentia.crypto import new_signing_key
from licentia.model import ContainerSerial, ProductItem


def shipped(path: Path, vendor: Vendor, serials: list[str], issued: int, key: bytes | None = None) -> str:
    """What `licentia central blacklist export` writes (make_blacklist, signed by the firm)."""
    entries = [BlacklistEntry(ContainerSerial.parse(s), issued, "stolen") for s in serials]
    path.write_bytes(make_blacklist(vendor.firm, entries, key or vendor.private, issued))
    return str(path)


def test_a_blacklisted_container_is_refused_at_once_or_after_the_delay(
    tmp_path: Path, root: Path, vendor: Vendor, procs: Procs
) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=5)])
    runtime = Runtime(procs, home, root)
    env = {"LICENTIA_HOME": str(home)}
    opts = {"firm_code": vendor.firm, "product_code": 7, "firm_key": str(vendor.public_file)}
    now = int(time.time())

    listed = shipped(tmp_path / "listed.lcbl", vendor, [serial], now)
    refused = Program(procs, root, env, **opts, blacklist=listed)
    assert refused.first["error"] == 1213, refused.first
    assert "blacklist" in refused.first["message"] and serial in refused.first["message"]
    assert runtime.sessions() == []  # the seat went back

    others = shipped(tmp_path / "others.lcbl", vendor, ["130-99999"], now)
    unlisted = Program(procs, root, env, **opts, blacklist=others)
    assert unlisted.granted

    # the delayed lock: listed, but the program keeps working until the delay has passed
    # since the list's signed issue time
    waiting = Program(procs, root, env, **opts, blacklist=listed, blacklist_delay_days=30)
    assert waiting.granted, waiting.first
    old = shipped(tmp_path / "old.lcbl", vendor, [serial], now - 2 * DAY)
    assert Program(procs, root, env, **opts, blacklist=old, blacklist_delay_days=1).first["error"] == 1213

    forged = shipped(tmp_path / "forged.lcbl", vendor, [], now, key=new_signing_key())
    assert Program(procs, root, env, **opts, blacklist=forged).first["error"] == 1211
    # only the two programs let through hold seats
    assert sorted(r["pid"] for r in runtime.sessions()) == sorted([unlisted.pid, waiting.pid])


def test_require_takes_the_blacklist_too(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    import subprocess
    import sys
    import textwrap

    from tests.runtime.harness import base_env

    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    Runtime(procs, home, root)
    listed = shipped(tmp_path / "listed.lcbl", vendor, [serial], int(time.time()))
    program = textwrap.dedent(f"""
        import licentia

        @licentia.require({vendor.firm}, 7, firm_key={str(vendor.public_file)!r}, blacklist={listed!r})
        def work():
            return "worked"

        try:
            print(work())
        except licentia.LicentiaError as exc:
            print(int(exc.code))
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                         env=base_env(LICENTIA_HOME=str(home)))
    assert out.stdout.strip() == "1213", out.stderr
