"""`licentia demo` (what `make run` runs): a demo vendor, container and license, then the runtime.

Idempotent: a second run finds what the first made and only starts the runtime.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from licentia.cli.common import fingerprint, machine_root
from licentia.model import ErrorCode, LicentiaError, ProductItem, Tolerance

DEMO_FIRM = 10001
DEMO_PRODUCT = 7
DEMO_UNITS = 100


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="set up a demo vendor, container and license, then run the runtime")
    p.add_argument("--no-serve", action="store_true", help="only set up; do not start the runtime")
    p.add_argument("--local-port", type=int, help="loopback port for programs (default 22349; 0: any free port)")
    p.add_argument("--http-port", type=int, help="status page port (default 22352; 0: any free port)")
    p.set_defaults(handler=cmd_demo)


def demo_home(args: argparse.Namespace) -> Path:
    explicit = getattr(args, "home", None) or os.environ.get("LICENTIA_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "licentia" / "demo"


def set_up(home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Make (or find) the demo keystore, container and license in `home`."""
    from licentia.containers import ContainerStore
    from licentia.core import updates
    from licentia.core.content import ContainerContent
    from licentia.fsutil import atomic_write
    from licentia.vendor.keystore import (
        create_keystore,
        export_public,
        load_keystore,
        read_keystore_info,
    )

    home.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    passphrase_file = home / "demo-passphrase"
    if not passphrase_file.exists():
        atomic_write(passphrase_file, secrets.token_urlsafe(18).encode() + b"\n", mode=0o600)
    passphrase = passphrase_file.read_text().strip()
    keystore = home / "vendor" / f"firm-{DEMO_FIRM}.keystore"
    if not keystore.exists():
        create_keystore(keystore, DEMO_FIRM, "Demo Vendor", passphrase)
        made.append(f"vendor keystore {keystore} (passphrase in {passphrase_file})")
    public_file = home / "demo-firm.pub"
    if not public_file.exists():
        atomic_write(public_file, export_public(read_keystore_info(keystore)).encode(), mode=0o644)
        made.append(f"firm public key {public_file}")

    now = int(time.time())
    store = ContainerStore(home / "containers", fingerprint(args))
    found = [r for r in store.inspect_all(now) if r.container is not None]
    container = found[0].container if found else None
    if container is None:
        container = store.create_soft(Tolerance.MEDIUM, now)
        made.append(f"soft container {container.serial} bound to this machine")
    content = container.read()
    if not content.find(DEMO_FIRM, DEMO_PRODUCT):
        keys = load_keystore(keystore, passphrase)
        item = ProductItem(product_code=DEMO_PRODUCT, quantity=1, units=DEMO_UNITS, text="licentia demo product")

        def change(c: ContainerContent) -> tuple[ContainerContent, updates.Applied]:
            request = updates.read_request(updates.make_request(c, DEMO_FIRM, now, {}))
            item_id = request.next_item_id()
            update = updates.issue_update(request, DEMO_FIRM, keys.private_key, [updates.PutItem(item_id, item)], now)
            applied = updates.apply_update(c, update, now, in_vm=False)
            return applied.content, applied

        container.transact(change)
        made.append(f"license: firm {DEMO_FIRM}, product {DEMO_PRODUCT}, quantity 1, {DEMO_UNITS} units")
    return {"home": home, "serial": str(container.serial), "made": made, "public_key": public_file}


def cmd_demo(args: argparse.Namespace) -> int:
    home = demo_home(args)
    try:
        facts = set_up(home, args)
    except LicentiaError as exc:
        if exc.code is ErrorCode.WRONG_PASSPHRASE:
            raise LicentiaError(exc.code, f"{exc.message} (the demo home {home} was made by someone else?)") from None
        raise
    print(f"licentia demo in {home}")
    for line in facts["made"] or ["(already set up: nothing new made)"]:
        print(f"  {line}")
    if args.no_serve:
        return 0

    from licentia.runtime import config, serve

    overrides = {"local_port": args.local_port, "http_port": args.http_port}
    cfg = config.build(home, overrides)
    example = Path(__file__).resolve().parents[3] / "examples" / "protected_app.py"
    example_cmd = f"{sys.executable} {example}" if example.exists() else "python examples/protected_app.py"

    def ready(runtime: Any) -> None:
        ports = runtime.ports
        env = f"LICENTIA_HOME={home}"
        lic = f"{sys.executable} -m licentia.cli.main"
        print(f"\nruntime {os.getpid()} is serving container {facts['serial']} "
              f"(socket {ports.get('socket')}, loopback port {ports.get('local_port')})")
        if "http_port" in ports:
            print(f"status page: http://{ports['http_address']}:{ports['http_port']}/")
        print("\nFrom another terminal:")
        print(f"  {env} {example_cmd}          # takes the license and works with it")
        print("  (start a second copy: it gets error 212, the only seat is taken;")
        print("   kill the first with `kill -9 PID`: the seat is free again at once)")
        print(f"  {env} {lic} sessions         # who holds the license")
        print(f"  {env} {lic} access --firm-code {DEMO_FIRM} --product-code {DEMO_PRODUCT} --hold 30")
        print("\nCtrl-C stops the runtime.")
        sys.stdout.flush()

    serve(home, cfg, machine_root=machine_root(args), environ=os.environ, on_ready=ready)
    return 0
