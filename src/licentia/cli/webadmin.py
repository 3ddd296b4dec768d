"""`licentia webadmin …` (WebAdmin's users) and `licentia diag` (an archive for support)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Any

from licentia.cli.common import fingerprint
from licentia.cli.home import home_from
from licentia.model import ErrorCode, LicentiaError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("webadmin", help="WebAdmin's users (the runtime's HTTPS port)")
    ss = p.add_subparsers(dest="webadmin_command", metavar="ACTION", required=True)
    pw = ss.add_parser("passwd", help="add a user or set a user's password and role")
    pw.add_argument("user")
    pw.add_argument("--role", choices=["admin", "read-only"], default="read-only")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    pw.set_defaults(handler=cmd_passwd)
    rm = ss.add_parser("remove", help="remove a user")
    rm.add_argument("user")
    rm.set_defaults(handler=cmd_remove)
    ls = ss.add_parser("users", help="list the users and their roles")
    ls.set_defaults(handler=cmd_users)

    d = sub.add_parser("diag", help="write one archive for support: versions, configuration (no secrets), "
                                    "container health, the runtime's state and the recent log")
    d.add_argument("-o", "--output", help="the archive to write (default licentia-diag-TIME.tar.gz here)")
    d.set_defaults(handler=cmd_diag)


def cmd_passwd(args: argparse.Namespace) -> int:
    from licentia.runtime.webadmin.auth import set_user, users_path

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the two passwords differ")
    home = home_from(args)
    set_user(users_path(home), args.user, args.role, password)
    print(f"WebAdmin user {args.user} ({args.role}) set in {users_path(home)}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from licentia.runtime.webadmin.auth import remove_user, users_path

    if not remove_user(users_path(home_from(args)), args.user):
        raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no WebAdmin user {args.user}")
    print(f"WebAdmin user {args.user} removed (their open sessions end when the runtime restarts)")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from licentia.runtime.webadmin.auth import read_users, users_path

    users = read_users(users_path(home_from(args)))
    if not users:
        print("no WebAdmin users; add one with `licentia webadmin passwd USER --role admin`")
    for name, entry in sorted(users.items()):
        print(f"{name}\t{entry.get('role', '?')}")
    return 0


def cmd_diag(args: argparse.Namespace) -> int:
    from licentia.runtime.diag import write_archive

    home = home_from(args)
    sections: dict[str, Any] = {"containers": _containers(args), "runtime": _runtime(home)}
    out = Path(args.output or f"licentia-diag-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.tar.gz")
    names = write_archive(out.resolve(), home, sections)
    print(f"wrote {out} ({os.path.getsize(out)} bytes): {', '.join(names)}")
    print("it holds no keys, tokens or passwords; send it to support")
    return 0


def _containers(args: argparse.Namespace) -> list[dict[str, Any]]:
    from licentia.cli.container import store

    try:
        st = store(args)
        rows = st.inspect_all(int(time.time()))
    except LicentiaError as exc:
        return [{"error": str(exc)}]
    fp = fingerprint(args)
    out: list[dict[str, Any]] = [{"fingerprint_strength": getattr(fp, "strength", None)}]
    out += [{"serial": r.serial, "kind": r.kind, "status": r.status.value, "binding": r.detail,
             "items": len(r.content.entries()) if r.content else None} for r in rows]
    return out


def _runtime(home: Path) -> dict[str, Any]:
    """The running runtime's own view (over its admin socket), or why there is none."""
    from licentia.sdk.admin import admin_client

    try:
        with admin_client(home) as c:
            server = c.request("info", what="server")["server"]
            containers = c.request("info", what="containers")["containers"]
            items = c.request("info", what="items")["items"]
            sessions = c.request("sessions")["sessions"]
    except (LicentiaError, OSError) as exc:
        return {"running": False, "why": str(exc)}
    return {"running": True, "server": server, "containers": containers,
            "items": [{k: v for k, v in i.items() if k not in ("protected_data", "hidden_data", "user_data")}
                      for i in items],
            "sessions": len(sessions)}
