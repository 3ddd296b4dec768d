"""`licentia access`, `licentia release`, `licentia sessions`: trying and managing licenses by hand."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import sys
import threading
from typing import Any

from licentia.cli.common import print_json
from licentia.cli.home import home_from
from licentia.model import ErrorCode, LicentiaError

HOLD_CHECK_INTERVAL = 1.0  # seconds between the checks of a held license


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    acc = sub.add_parser("access", help="take a license by hand and hold it (Ctrl-C releases it)")
    acc.add_argument("--firm-code", type=int, required=True)
    acc.add_argument("--product-code", type=int, required=True)
    acc.add_argument("--mode", default="per-access", choices=("per-access", "per-station", "none", "exclusive"))
    acc.add_argument("--where", choices=("local", "network", "local-first", "network-first"),
                     help="where to look (default: the runtime's configured order)")
    acc.add_argument("--feature", type=lambda s: int(s, 0), default=0, help="feature code the program needs")
    acc.add_argument("--version", help="program version, e.g. 2.1")
    acc.add_argument("--container", help="use only this container (serial)")
    acc.add_argument("--firm-key", help="firm public key file: verify the answer as a protected program does")
    acc.add_argument("--hold", type=float, help="hold for this many seconds, then release (default: until Ctrl-C); ends, with error 106, "
                     "when the license is taken back (an administrator's release)")
    acc.add_argument("--decrement", type=int, default=0, metavar="UNITS", help="spend units once granted")
    acc.add_argument("--json", action="store_true", help="print the grant as JSON")
    acc.set_defaults(handler=cmd_access)

    rel = sub.add_parser("release", help="free a seat as administrator (see `licentia sessions`)")
    rel.add_argument("handle", type=int)
    _network_admin_options(rel)
    rel.set_defaults(handler=cmd_release)

    ses = sub.add_parser("sessions", help="who holds which license: program, PID, user, host, since")
    ses.add_argument("--firm-code", type=int)
    ses.add_argument("--product-code", type=int)
    ses.add_argument("--json", action="store_true")
    _network_admin_options(ses)
    ses.set_defaults(handler=cmd_sessions)


def _network_admin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="HOST:PORT", help="a network server, administered over its port")
    p.add_argument("--token-file", metavar="FILE",
                   help="with --server: a file holding the server home's admin.token (or reader.token)")


def _admin_client(args: argparse.Namespace) -> Any:
    from licentia.sdk.admin import admin_client, network_admin_client, token_from

    if args.server:
        if not args.token_file:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--server needs --token-file",
                                "copy the server home's admin.token (or reader.token) and name it")
        return network_admin_client(args.server, token_from(args.token_file))
    return admin_client(home_from(args))


def _use_home(args: argparse.Namespace) -> None:
    if not os.environ.get("LICENTIA_SERVER") and not os.environ.get("LICENTIA_RUNTIME"):
        os.environ["LICENTIA_HOME"] = str(home_from(args))


def cmd_access(args: argparse.Namespace) -> int:
    import licentia

    _use_home(args)
    stop = threading.Event()
    gone: list[str] = []  # why the license went, when it went while held
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_event(_lic: Any, event: licentia.Event, detail: str) -> None:
        if event is licentia.Event.LICENSE_GONE:
            gone.append(detail or "the license is gone")
            stop.set()

    # while held, the license is checked every second: an administrator's release (or a
    # server that freed it) ends the hold at once instead of at Ctrl-C
    lic = licentia.access(args.firm_code, args.product_code, mode=args.mode, where=args.where,
                          feature=args.feature, version=args.version, container=args.container,
                          firm_key=args.firm_key, verify=bool(args.firm_key), on_event=on_event,
                          watch_interval=HOLD_CHECK_INTERVAL)
    try:
        info = lic.info
        if args.decrement:
            lic.decrement(args.decrement)
            info = lic.info
        row: dict[str, Any] = {
            "handle": info.handle, "firm_code": info.firm_code, "product_code": info.product_code,
            "container": info.container, "item": info.item_id, "mode": info.mode, "location": info.location,
            "server": info.server, "units": info.units, "valid_until": info.valid_until, "verified": info.verified,
            "text": info.text, "pid": os.getpid(),
        }
        if args.json:
            print_json(row)
        else:
            until = "-" if info.valid_until is None else _when(info.valid_until)
            print(f"granted handle {info.handle}: firm {info.firm_code} product {info.product_code} "
                  f"from container {info.container} ({info.location}{' ' + info.server if info.location != 'local' else ''}), "
                  f"mode {info.mode}; units {'-' if info.units is None else info.units}; valid until {until}; "
                  f"{'verified' if info.verified else 'not verified (give --firm-key)'}")
            print(f"holding it as pid {os.getpid()}" + (f" for {args.hold:g} s" if args.hold is not None
                                                         else "; Ctrl-C releases it"))
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(args.hold)
    finally:
        lic.release()
    if gone:
        raise LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {lic.handle} was taken back while held: {gone[0]}",
                            "take the license again (`licentia sessions` shows who holds it)")
    if not args.json:
        print("released")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        client.request("admin.release", handle=args.handle)
    print(f"released handle {args.handle}; its program learns it at its next check")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from licentia.sdk.admin import program_client

    home = home_from(args)
    fields: dict[str, Any] = {}
    if args.firm_code is not None:
        fields["firm"] = args.firm_code
    if args.product_code is not None:
        fields["product"] = args.product_code
    try:
        client = _admin_client(args)
    except LicentiaError as exc:
        if exc.code is not ErrorCode.ACCESS_DENIED or args.server:
            raise
        client = program_client(home)
    with client:
        rows = client.request("sessions", **fields)["sessions"]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no licenses are held")
        return 0
    print(f"{'HANDLE':>14}  {'FIRM':>6} {'PRODUCT':>7}  {'MODE':<11} {'PROGRAM':<18} {'PID':>7}  {'USER':<10} "
          f"{'HOST':<16} {'WHERE':<22} SINCE")
    for r in rows:
        pid = "-" if r.get("pid") is None else str(r["pid"])
        print(f"{r['handle']:>14}  {r['firm']:>6} {r['product']:>7}  {r['mode']:<11} {r['program'][:18]:<18} "
              f"{pid:>7}  {r['user'][:10]:<10} {r['host'][:16]:<16} {r['location'][:22]:<22} {_when(r['since'])}")
    return 0


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
