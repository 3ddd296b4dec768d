"""`licentia container …`: create, list and show the containers of this home.

Token containers (PKCS#11) appear beside soft ones once a module is configured:
`--module`, $LICENTIA_PKCS11_MODULE, or the module recorded by `container create --token`.
A token's user PIN comes from --pin-file, else $LICENTIA_PIN_FILE, else $LICENTIA_PIN, else
the PIN file recorded at creation: what the user gives now wins over what was recorded. It
is tried once, never retried.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from licentia.cli.common import (
    containers_dir,
    fingerprint,
    fmt_duration,
    fmt_time,
    now,
    parse_serial,
    print_json,
)
from licentia.containers import ContainerStore, item_rows
from licentia.containers.operations import set_user_fields
from licentia.containers.store import TokenInspection
from licentia.core.content import ContainerContent
from licentia.model import ContainerKind, ContainerStatus, ErrorCode, LicentiaError, Tolerance


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("container", help="license containers on this machine")
    cs = p.add_subparsers(dest="container_command", metavar="ACTION", required=True)

    create = cs.add_parser(
        "create",
        help="create an empty soft container bound to this machine, or (--token) make a "
        "PKCS#11 token a container",
    )
    create.add_argument(
        "--binding", default="medium", help="tolerance to machine changes: loose, medium (default), strict"
    )
    create.add_argument(
        "--token", action="store_true",
        help="make a PKCS#11 token a container: its key pair is generated inside the token",
    )
    create.add_argument("--module", help="PKCS#11 module (default $LICENTIA_PKCS11_MODULE or SoftHSM2)")
    which = create.add_mutually_exclusive_group()
    which.add_argument("--slot", type=int, help="the token's slot id")
    which.add_argument("--label", help="the token's label")
    create.add_argument("--pin-file", help="file holding the token's user PIN (recorded for later use)")
    create.set_defaults(handler=cmd_create)

    lst = cs.add_parser("list", help="list containers (soft, and token ones of the configured module)")
    lst.add_argument("--module", help="PKCS#11 module to look for token containers in")
    lst.add_argument("--pin-file", help="file holding the token user PIN (wins over the one recorded at creation)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=cmd_list)

    show = cs.add_parser("show", help="show a container: state, binding health or token, items")
    show.add_argument("serial")
    show.add_argument("--module", help="PKCS#11 module to look for token containers in")
    show.add_argument("--pin-file", help="file holding the token's user PIN (token containers)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_show)

    user = cs.add_parser("set-user-data", help="write an item's user-writable text or user data")
    user.add_argument("serial")
    user.add_argument("--firm-code", type=int, required=True)
    user.add_argument("--item-id", type=int, required=True)
    user.add_argument("--text")
    user.add_argument("--data", help="user data (text, stored as UTF-8 bytes)")
    user.add_argument("--module", help="PKCS#11 module (token containers)")
    user.add_argument("--pin-file", help="file holding the token's user PIN (token containers)")
    user.set_defaults(handler=cmd_set_user_data)


def store(args: argparse.Namespace) -> ContainerStore:
    return ContainerStore(
        containers_dir(args),
        fingerprint(args),
        token_module=getattr(args, "module", None),
        token_pin=token_pin(args, required=False),
    )


def token_pin(args: argparse.Namespace, *, required: bool) -> str | None:
    """The user PIN: --pin-file, else $LICENTIA_PIN_FILE, else $LICENTIA_PIN, else a prompt."""
    path = getattr(args, "pin_file", None) or os.environ.get("LICENTIA_PIN_FILE")
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, f"cannot read the PIN file {path}: {exc.strerror}"
            ) from None
    if os.environ.get("LICENTIA_PIN"):
        return os.environ["LICENTIA_PIN"]
    if not required:
        return None
    if not sys.stdin.isatty():
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            "no token PIN: give --pin-file FILE (or $LICENTIA_PIN_FILE), or run in a terminal to be asked",
        )
    return getpass.getpass("token user PIN: ")


def cmd_create(args: argparse.Namespace) -> int:
    if args.token:
        return _create_token(args)
    if args.slot is not None or args.label or args.pin_file:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--slot, --label and --pin-file go with --token")
    tolerance = Tolerance.parse(args.binding)
    fp = fingerprint(args)
    container = store(args).create_soft(tolerance, now())
    print(container.serial)
    print(
        f"soft container {container.serial} bound to this machine ({tolerance.value} tolerance; "
        f"{len(container.health.matched)} properties; binding {fp.strength or 'n/a'})",
        file=sys.stderr,
    )
    return 0


def _create_token(args: argparse.Namespace) -> int:
    if args.slot is None and not args.label:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "name the token with --slot N or --label L")
    pin = token_pin(args, required=True)
    assert pin is not None
    st = ContainerStore(containers_dir(args), fingerprint(args), token_module=args.module)
    container = st.create_token(
        module=args.module, label=args.label, slot=args.slot, pin=pin, now=now(),
        pin_file=Path(args.pin_file) if args.pin_file else None,
    )
    with container:
        print(container.serial)
        print(
            f"token container {container.serial} on token '{container.token.label}' "
            f"(slot {container.token.slot_id}): Ed25519 key generated inside the token, "
            "not extractable",
            file=sys.stderr,
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    st = store(args)
    t = now()
    rows = st.inspect_all(t)
    tokens = st.inspect_tokens(t)
    if args.json:
        listed = [{"serial": r.serial, "kind": r.kind, "status": r.status.value, "detail": r.detail,
                   "items": len(r.content.entries()) if r.content else None} for r in rows]
        listed += [{"serial": r.serial, "kind": r.kind, "status": r.status, "detail": r.detail,
                    "items": len(r.content.entries()) if r.content else None} for r in tokens]
        print_json(listed)
        return 0
    if not rows and not tokens:
        print("no containers; create one with `licentia container create`")
        return 0
    print(f"{'SERIAL':<16} {'KIND':<6} {'STATUS':<18} {'ITEMS':>5}  BINDING / TOKEN")
    for r in rows:
        items = str(len(r.content.entries())) if r.content else "-"
        print(f"{r.serial:<16} {r.kind:<6} {r.status.value:<18} {items:>5}  {r.detail}")
    for tr in tokens:
        items = str(len(tr.content.entries())) if tr.content else "-"
        print(f"{tr.serial:<16} {tr.kind:<6} {tr.status:<18} {items:>5}  {tr.detail}")
    return 0


def _show_token(args: argparse.Namespace, st: ContainerStore, r: TokenInspection, t: int) -> int:
    rows = item_rows(r.content, t) if r.content else []
    failed = r.content is None
    if args.json:
        firms: list[dict[str, Any]] = []
        if r.content:
            firms = [{"firm_code": f.firm_code, "update_counter": f.update_counter, "text": f.text}
                     for f in r.content.firms.values()]
        claims = r.claims.to_dict() if r.claims else None
        print_json({"serial": r.serial, "kind": r.kind, "status": r.status, "token": r.detail,
                    "token_label": r.token_label, "slot": r.slot, "claims": claims,
                    "firms": firms, "items": rows})
        return 2 if failed else 0
    print(f"container {r.serial} ({r.kind})")
    print(f"  status   {r.status}")
    print(f"  token    {r.detail}")
    if failed:
        if r.error is not None:
            print(f"  problem  {r.error}")
        return 2
    assert r.content is not None
    if r.claims is not None and r.claims.changes:
        print(f"  claims   {len(r.claims.changes)} change(s) of hands in the last minute")
    _print_content(r.content, rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    serial = parse_serial(args.serial)
    st = store(args)
    if serial.kind is ContainerKind.TOKEN:
        t = now()
        return _show_token(args, st, st.inspect_token(serial, t), t)
    path = st.path_of(serial)
    if not path.exists():
        raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"no container {serial} in {st.directory}")
    t = now()
    r = st.inspect(path, t)
    rows = item_rows(r.content, t) if r.content else []
    if args.json:
        firms: list[dict[str, Any]] = []
        if r.content:
            firms = [{"firm_code": f.firm_code, "update_counter": f.update_counter, "text": f.text}
                     for f in r.content.firms.values()]
        print_json({"serial": r.serial, "kind": r.kind, "status": r.status.value, "binding": r.detail,
                    "firms": firms, "items": rows})
        return 0 if r.status is not ContainerStatus.INVALID and r.status is not ContainerStatus.BROKEN else 2
    print(f"container {r.serial} ({r.kind})")
    print(f"  status   {r.status.value}")
    if r.error is not None:
        print(f"  problem  {r.error}")
        return 2
    print(f"  binding  {r.detail}")
    assert r.content is not None
    _print_content(r.content, rows)
    return 0


def _print_content(content: ContainerContent, rows: list[dict[str, Any]]) -> None:
    if content.clock.manipulated:
        print(f"  clock    manipulated (set back at {fmt_time(content.clock.manipulated_at)}); "
              "time-limited items stay closed until a signed time from the vendor heals it")
    for f in content.firms.values():
        print(f"  firm {f.firm_code}  update step {f.update_counter}" + (f"  {f.text}" if f.text else ""))
    if not rows:
        print("  no items: request an update with `licentia update request`")
    for row in rows:
        _print_item(row)


def _print_item(row: dict[str, Any]) -> None:
    state = row["status"] + (f" (error {row['error']}: {row['reason']})" if row["error"] else "")
    print(f"  item {row['item_id']}: firm {row['firm_code']} product {row['product_code']}  {state}")
    opts = [f"quantity {row['quantity']}" + (" (local only)" if row["quantity"] == 0 else "")]
    if row["expires_at"] is not None:
        opts.append(f"expires {fmt_time(row['expires_at'])}")
    if row["activates_at"] is not None:
        opts.append(f"active from {fmt_time(row['activates_at'])}")
    if row["usage_period"] is not None:
        started = fmt_time(row["usage_started_at"]) if row["usage_started_at"] else "not started"
        opts.append(f"usage period {fmt_duration(row['usage_period'])} ({started})")
    if row["units"] is not None:
        opts.append(f"units {row['units_remaining']}/{row['units']}")
    if row["feature_map"]:
        opts.append(f"features {row['feature_map']:#010x}")
    if row["versions"]:
        opts.append(f"versions {row['versions']}")
    if row["maintenance_until"] is not None or row["maintenance_from"] is not None:
        opts.append(f"maintenance {fmt_time(row['maintenance_from'])} .. {fmt_time(row['maintenance_until'])}")
    if row["checkpoint_period"]:
        opts.append(f"checkpoint every {fmt_duration(row['checkpoint_period'])}")
    if not row["vm_allowed"]:
        opts.append("no virtual machines")
    if row["tmr_id"] is not None:
        named = row.get("tmr_constituents") or []
        opts.append(f"TMR license {row['tmr_id']} (one of three constituents"
                    + (f": {', '.join(named)})" if named else ")"))
    if row["locked"]:
        opts.append("LOCKED")
    print("    " + "; ".join(opts))
    if row["text"]:
        print(f"    text: {row['text']}")


def cmd_set_user_data(args: argparse.Namespace) -> int:
    if args.text is None and args.data is None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "give --text and/or --data")
    container = store(args).open_any(parse_serial(args.serial), now())
    try:
        set_user_fields(
            container, args.firm_code, args.item_id, text=args.text,
            user_data=None if args.data is None else args.data.encode(),
        )
    finally:
        close = getattr(container, "close", None)
        if close is not None:
            close()
    print(f"item {args.item_id} of firm {args.firm_code} in {container.serial} updated")
    return 0
