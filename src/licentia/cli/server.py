"""`licentia server …`: the server search list (network license servers, asked in order)."""

from __future__ import annotations

import argparse

from licentia.cli.common import print_json
from licentia.cli.home import home_from


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("server", help="the server search list: network license servers to ask, in order")
    ss = p.add_subparsers(dest="server_command", metavar="ACTION", required=True)

    add = ss.add_parser("add", help="add a server (HOST or HOST:PORT; port 22350 by default)")
    add.add_argument("address")
    add.add_argument("--position", type=int, help="place it at this position (1 = asked first)")
    add.set_defaults(handler=cmd_add)

    rm = ss.add_parser("remove", help="remove a server from the list")
    rm.add_argument("address")
    rm.set_defaults(handler=cmd_remove)

    ls = ss.add_parser("list", help="show the list in the order servers are asked")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_list)


def _path(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from licentia.runtime.home import RuntimeHome

    return RuntimeHome(home_from(args)).servers


def cmd_add(args: argparse.Namespace) -> int:
    from licentia.runtime import searchlist

    servers = searchlist.add(_path(args), args.address, args.position)
    print(f"server search list: {', '.join(servers)}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from licentia.runtime import searchlist

    servers = searchlist.remove(_path(args), args.address)
    print(f"server search list: {', '.join(servers) or '(empty)'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from licentia.runtime import searchlist

    servers = searchlist.read_list(_path(args))
    if args.json:
        print_json(servers)
        return 0
    if not servers:
        print("the server search list is empty; add a server with `licentia server add HOST[:PORT]`")
        return 0
    for i, s in enumerate(servers, 1):
        print(f"{i}. {s}")
    return 0
