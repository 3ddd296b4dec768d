"""`licentia borrow …`: borrow a network server's seat into this machine's soft container
(docs/admin.md, "Borrowing a seat").

On the borrowing machine (its runtime does the work):

    licentia borrow FIRM:PRODUCT --for 7d [--server HOST] [--container SERIAL]
    licentia borrow FIRM:PRODUCT --for 7d --offline -o borrow.request   (the offline way)
    licentia borrow import borrow.certificate
    licentia borrow return ID [--offline -o borrow.return]
    licentia borrow list [--json]

On the server's machine (an administrator, for the offline way):

    licentia borrow grant borrow.request -o borrow.certificate
    licentia borrow accept-return borrow.return
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from licentia.cli.common import fmt_time, parse_duration, print_json, read_file
from licentia.cli.home import home_from
from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError

ACTIONS = ("list", "return", "import", "grant", "accept-return")

USAGE = """licentia borrow FIRM:PRODUCT --for DURATION [--server HOST] [--container SERIAL] [--offline -o FILE]
       licentia borrow list [--json]
       licentia borrow return ID [--offline -o FILE]
       licentia borrow import CERTIFICATE
       licentia borrow grant REQUEST -o CERTIFICATE        (on the server)
       licentia borrow accept-return RETURN                (on the server)"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("borrow", help="borrow a network server's seat into this machine for a while, return it, "
                       "list borrows", usage=USAGE, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", metavar="FIRM:PRODUCT|ACTION")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_borrow)


def _parser(name: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"licentia borrow {name}", usage=USAGE)


def cmd_borrow(args: argparse.Namespace) -> int:
    what, rest = args.what, list(args.rest)
    if what == "list":
        p = _parser("list")
        p.add_argument("--json", action="store_true")
        return _list(args, p.parse_args(rest))
    if what == "return":
        p = _parser("return")
        p.add_argument("borrow", metavar="ID")
        p.add_argument("--offline", action="store_true", help="write the return file instead of telling the server")
        p.add_argument("-o", "--output", help="the return file (with --offline, or kept in any case)")
        return _return(args, p.parse_args(rest))
    if what == "import":
        p = _parser("import")
        p.add_argument("certificate")
        return _import(args, p.parse_args(rest))
    if what == "grant":
        p = _parser("grant")
        p.add_argument("request")
        p.add_argument("-o", "--output", required=True)
        return _grant(args, p.parse_args(rest))
    if what == "accept-return":
        p = _parser("accept-return")
        p.add_argument("receipt")
        return _accept(args, p.parse_args(rest))
    p = _parser("FIRM:PRODUCT")
    p.add_argument("--for", dest="duration", required=True, help="how long: e.g. 7d, 12h, 90m")
    p.add_argument("--server", help="the network server (HOST or HOST:PORT); default: the server search list")
    p.add_argument("--container", help="this machine's soft container to hold the seat (default: the first)")
    p.add_argument("--offline", action="store_true", help="write a request file for the server's administrator")
    p.add_argument("-o", "--output", help="the request file (with --offline)")
    sub = p.parse_args(rest)
    firm, product = _firm_product(what)
    return _take(args, sub, firm, product)


def _firm_product(text: str) -> tuple[int, int]:
    try:
        firm, product = (int(x) for x in text.split(":"))
    except ValueError:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{text!r} is neither FIRM:PRODUCT nor one of "
                            f"{', '.join(ACTIONS)}", "e.g. `licentia borrow 10001:7 --for 7d`") from None
    return firm, product


def _admin(args: argparse.Namespace) -> Any:
    from licentia.sdk.admin import admin_client

    return admin_client(home_from(args))


def _take(args: argparse.Namespace, sub: argparse.Namespace, firm: int, product: int) -> int:
    seconds = parse_duration(sub.duration)
    fields: dict[str, Any] = {"firm": firm, "product": product, "seconds": seconds}
    if sub.server:
        fields["server"] = sub.server
    if sub.container:
        fields["container"] = sub.container
    if sub.offline:
        if not sub.output:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--offline needs -o FILE for the request")
        fields["offline"] = True
    with _admin(args) as client:
        reply = client.request("borrow", **fields)
    if sub.offline:
        atomic_write(Path(sub.output), reply["request"])
        print(f"borrow request {reply['borrow']} written to {sub.output}: give it to the server's administrator "
              f"(`licentia borrow grant {sub.output} -o CERTIFICATE`), then `licentia borrow import CERTIFICATE` here")
        return 0
    print(f"borrowed {reply['firm']}:{reply['product']} from {reply['server']} until {fmt_time(reply['until'])}: "
          f"item {reply['item']} of container {reply['container']} (borrow {reply['borrow']})")
    return 0


def _import(args: argparse.Namespace, sub: argparse.Namespace) -> int:
    data = read_file(sub.certificate, "borrow certificate")
    with _admin(args) as client:
        reply = client.request("borrow.import", certificate=data)
    print(f"borrowed {reply['firm']}:{reply['product']} from {reply['server']} until {fmt_time(reply['until'])}: "
          f"item {reply['item']} of container {reply['container']} (borrow {reply['borrow']})")
    return 0


def _return(args: argparse.Namespace, sub: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"borrow": sub.borrow}
    if sub.offline:
        if not sub.output:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--offline needs -o FILE for the return file")
        fields["offline"] = True
    with _admin(args) as client:
        reply = client.request("borrow.return", **fields)
    if reply.get("already"):
        print(f"borrow {sub.borrow} was returned already; nothing changed")
        return 0
    if sub.output and "receipt" in reply:
        atomic_write(Path(sub.output), reply["receipt"])
    if reply.get("confirmed"):
        print(f"returned borrow {sub.borrow}: the seat is free again on its server")
    elif sub.offline:
        print(f"returned borrow {sub.borrow} here; give {sub.output} to the server's administrator "
              f"(`licentia borrow accept-return {sub.output}`) to free the seat before its time ends")
    else:
        print(f"returned borrow {sub.borrow} here; the server could not be told ({reply.get('why', '?')}): "
              "the runtime tells it when it can be reached, and the seat comes back at its end in any case")
    return 0


def _grant(args: argparse.Namespace, sub: argparse.Namespace) -> int:
    data = read_file(sub.request, "borrow request")
    with _admin(args) as client:
        reply = client.request("borrow.take", request=data)
    atomic_write(Path(sub.output), reply["certificate"])
    print(f"lent borrow {reply['borrow']} until {fmt_time(reply['until'])}; certificate written to {sub.output}: "
          "import it on the borrowing machine with `licentia borrow import FILE`")
    return 0


def _accept(args: argparse.Namespace, sub: argparse.Namespace) -> int:
    data = read_file(sub.receipt, "borrow return")
    with _admin(args) as client:
        reply = client.request("borrow.give-back", receipt=data)
    if reply["freed"]:
        print("the borrowed seat is free again")
    else:
        print(f"nothing changed: the borrow had ended already ({reply['state']})")
    return 0


def _list(args: argparse.Namespace, sub: argparse.Namespace) -> int:
    with _admin(args) as client:
        reply = client.request("borrow.list")
    if sub.json:
        print_json({k: reply[k] for k in ("held", "lent", "unconfirmed_returns")})
        return 0
    held, lent = reply["held"], reply["lent"]
    if not held and not lent:
        print("no borrowed seats here, and none lent from here")
    if held:
        print("borrowed into this machine:")
        for h in held:
            print(f"  {h['borrow']}  {h['firm']}:{h['product']}  item {h['item']} of {h['container']}  "
                  f"from {h['server']}  until {fmt_time(h['until'])}")
    if lent:
        print("lent from this server:")
        for r in lent:
            end = f"until {fmt_time(r['until'])}" if r["state"] == "active" else f"{r['state']} {fmt_time(r['ended_at'])}"
            print(f"  {r['borrow']}  {r['firm']}:{r['product']}  to {r['user']}@{r['host']} ({r['client']})  {end}")
    for bid in reply["unconfirmed_returns"]:
        print(f"returned here, not yet confirmed by its server: {bid}")
    return 0
