"""`licentia central …`: run the vendor's back office, and operate it.

    licentia central serve [--db URL] [--host H] [--port P] [--keystore K] [--passphrase-file F]
                           [--cert PEM --key PEM | --insecure-http] [--limit-concurrency N] …
    licentia central blacklist export -o FILE          (signed, from the database)
    licentia central product add CODE NAME [--template JSON] [--policy JSON]
    licentia central customer add --company C --site S --type single-user|multi-user [--host-name H --ip A]
    licentia central order add --product CODE [--quantity N] [--count N] [--customer ID] [--reference R]
    licentia central ticket show TICKET
    licentia central ticket activate TICKET REQUEST -o UPDATE [--license ID]  (a group request: a TMR license)
    licentia central receipt RECEIPT                   (a receipt, or the group receipt of a TMR license)
    licentia central container show|blacklist|review SERIAL
    licentia central replacement list|approve|refuse
    licentia central api METHOD PATH [JSON]

The central home is `<licentia home>/central`: its SQLite database, the first admin token
(`admin.token`, mode 0600) and the certificate central makes at its first start
(`tls/central.crt|key`). Central serves HTTPS unless --insecure-http (a TLS proxy in front).
Operator commands talk to a running central (--central URL, default https://127.0.0.1:22360)
with a token (--token-file, default that admin.token); they trust central by --central-pin,
by --central-ca, or by the pin stored at the first connection (`<home>/tls/pins/`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from licentia.cli.home import home_from
from licentia.model import ErrorCode, LicentiaError

DEFAULT_URL = "https://127.0.0.1:22360"


def central_home(args: argparse.Namespace) -> Path:
    return home_from(args) / "central"


def central_tls_args(p: argparse.ArgumentParser) -> None:
    """--central-pin and --central-ca: how a command trusts central's certificate."""
    p.add_argument("--central-pin", help="central's certificate pin (sha256:…, printed by `central serve`); "
                   "default: the pin stored at the first connection")
    p.add_argument("--central-ca", help="CA file that signed central's certificate (instead of a pin)")


def central_client(args: argparse.Namespace, url: str, token: str | None = None) -> Any:
    """A client of central at `url` that trusts it as the arguments say (see central_tls_args)."""
    from licentia.central.client import CentralClient
    from licentia.protocol.rest import central_context

    verify = central_context(url, home_from(args) / "tls" / "pins",
                             fingerprint=getattr(args, "central_pin", None), ca_file=getattr(args, "central_ca", None))
    return CentralClient(url, token=token, verify=verify)


def _home_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=argparse.SUPPRESS, help="licentia home (central keeps its files in HOME/central)")


def _keystore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keystore", help="firm keystore file (default: the one in the home's vendor/)")
    p.add_argument("--passphrase-file", help="file holding the keystore passphrase")
    p.add_argument("--db", help="database URL (default: SQLite in the central home; or postgresql://…)")


def _client_args(p: argparse.ArgumentParser) -> None:
    _home_arg(p)
    p.add_argument("--central", default=os.environ.get("LICENTIA_CENTRAL", DEFAULT_URL), help="central's URL")
    central_tls_args(p)
    p.add_argument("--token-file", help="API token file (default: HOME/central/admin.token)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("central", help="the vendor's back office: serve it, operate it")
    cs = p.add_subparsers(dest="central_command", metavar="ACTION", required=True)

    serve = cs.add_parser("serve", help="run central (HTTP API and portal)")
    _home_arg(serve)
    _keystore_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=22360)
    serve.add_argument("--cert", metavar="PEM", help="the vendor's certificate (PEM; default: one central makes at its first start)")
    serve.add_argument("--key", metavar="PEM", help="the private key of --cert (PEM)")
    serve.add_argument("--insecure-http", action="store_true",
                       help="serve plain HTTP (only behind a TLS proxy: tokens and tickets would cross in clear)")
    from licentia.central.server import Limits

    d = Limits()
    serve.add_argument("--limit-concurrency", type=int, metavar="N", default=d.limit_concurrency,
                       help=f"connections and requests at once; more are answered 503 (default {d.limit_concurrency})")
    serve.add_argument("--timeout-keep-alive", type=int, metavar="SECONDS", default=d.timeout_keep_alive,
                       help=f"seconds an idle keep-alive connection stays open (default {d.timeout_keep_alive})")
    serve.add_argument("--max-header-bytes", type=int, metavar="BYTES", default=d.max_header_bytes,
                       help=f"bytes of an incomplete request head; more close the connection (default {d.max_header_bytes})")
    serve.add_argument("--max-body", type=int, metavar="BYTES", default=d.max_body,
                       help=f"bytes of a request body; more are answered 413 (default {d.max_body})")
    serve.add_argument("--backlog", type=int, metavar="N", default=d.backlog, help=f"listen backlog (default {d.backlog})")
    serve.set_defaults(handler=cmd_serve)

    bl = cs.add_parser("blacklist", help="the blacklist of lost and stolen containers")
    bls = bl.add_subparsers(dest="blacklist_command", metavar="ACTION", required=True)
    exp = bls.add_parser("export", help="write the blacklist signed by the firm, to ship with the program")
    _home_arg(exp)
    _keystore_args(exp)
    exp.add_argument("-o", "--output", required=True)
    exp.set_defaults(handler=cmd_blacklist_export)

    prod = cs.add_parser("product", help="products").add_subparsers(dest="product_command", metavar="ACTION", required=True)
    add = prod.add_parser("add", help="create a product")
    _client_args(add)
    add.add_argument("code", type=int)
    add.add_argument("name")
    add.add_argument("--template", default="{}", help='item options as JSON, e.g. {"feature_map": 3}')
    add.add_argument("--policy", help="replacement policy as JSON")
    add.add_argument("--tmr", action="store_true",
                     help="a TMR product: each license goes into three constituent containers (a group request)")
    add.set_defaults(handler=cmd_product_add)
    ls = prod.add_parser("list", help="list products")
    _client_args(ls)
    ls.set_defaults(handler=lambda a: _show(a, "GET", "/api/products"))

    cust = cs.add_parser("customer", help="customers").add_subparsers(dest="customer_command", metavar="ACTION", required=True)
    add = cust.add_parser("add", help="register a customer")
    _client_args(add)
    add.add_argument("--company", required=True)
    add.add_argument("--site", required=True)
    add.add_argument("--type", dest="license_type", choices=("single-user", "multi-user"), required=True)
    add.add_argument("--host-name", help="multi-user: the license server's host name (ASCII letters, digits, hyphens; "
                     "dots between the labels of a fully qualified name)")
    add.add_argument("--ip", help="multi-user: the license server's IP address")
    add.add_argument("--server-container", metavar="SERIAL",
                     help="multi-user: the license server's container, linked at its first contact from --host-name")
    add.add_argument("--auto-activate-after", metavar="DURATION",
                     help="wait before a ticket goes to the license server by itself (e.g. 12h; default 24h)")
    add.set_defaults(handler=cmd_customer_add)

    cset = cust.add_parser("set", help="set a customer's wait before automatic activation, or its server's container")
    _client_args(cset)
    cset.add_argument("customer")
    cset.add_argument("--server-container", metavar="SERIAL")
    cset.add_argument("--auto-activate-after", metavar="DURATION", help="e.g. 12h, 0s; 'default' for 24h")
    cset.set_defaults(handler=cmd_customer_set)

    ct = cust.add_parser("change-type", help="change the license type (licenses are invalidated and issued anew)")
    _client_args(ct)
    ct.add_argument("customer")
    ct.add_argument("--type", dest="license_type", choices=("single-user", "multi-user"), required=True)
    ct.add_argument("--host-name")
    ct.add_argument("--ip")
    ct.set_defaults(handler=lambda a: _show(a, "POST", f"/api/customers/{a.customer}/license-type", {
        "license_type": a.license_type, "server_host": a.host_name, "server_ip": a.ip}))
    cs_ = cust.add_parser("change-server", help="move to a new license server (new customer id, licenses issued anew)")
    _client_args(cs_)
    cs_.add_argument("customer")
    cs_.add_argument("--host-name", required=True)
    cs_.add_argument("--ip", required=True)
    cs_.set_defaults(handler=lambda a: _show(a, "POST", f"/api/customers/{a.customer}/server", {
        "server_host": a.host_name, "server_ip": a.ip}))
    show = cust.add_parser("show", help="a customer and its tickets")
    _client_args(show)
    show.add_argument("customer")
    show.set_defaults(handler=lambda a: _show(a, "GET", f"/api/customers/{a.customer}"))

    order = cs.add_parser("order", help="orders").add_subparsers(dest="order_command", metavar="ACTION", required=True)
    add = order.add_parser("add", help="order licenses; prints the ticket")
    _client_args(add)
    add.add_argument("--product", type=int, required=True, help="product code")
    add.add_argument("--quantity", type=int, help="license quantity (concurrent seats) of each license")
    add.add_argument("--count", type=int, default=1, help="number of licenses")
    add.add_argument("--options", help="item options over the product's template, as JSON")
    add.add_argument("--customer")
    add.add_argument("--reference", help="order reference; the same reference extends its ticket")
    add.set_defaults(handler=cmd_order_add)

    ticket = cs.add_parser("ticket", help="tickets").add_subparsers(dest="ticket_command", metavar="ACTION", required=True)
    show = ticket.add_parser("show", help="a ticket and its licenses")
    _client_args(show)
    show.add_argument("ticket")
    show.set_defaults(handler=lambda a: _show(a, "GET", f"/api/tickets/{a.ticket}"))
    act = ticket.add_parser("activate", help="activate a ticket with a request file, or a TMR license with a group "
                                             "request; writes the update or group update")
    _client_args(act)
    act.add_argument("ticket")
    act.add_argument("request", help="request file (licentia update request) or group request (update group-request)")
    act.add_argument("-o", "--output", required=True, help="the update (or group update) file to write")
    act.add_argument("--license", dest="licenses", type=int, action="append", metavar="ID",
                     help="only this license of the ticket (repeat for more)")
    act.set_defaults(handler=cmd_ticket_activate)
    rc = cs.add_parser("receipt", help="send central a receipt file, or a TMR license's group receipt")
    _client_args(rc)
    rc.add_argument("receipt", help="receipt file (update apply --receipt) or group receipt (update group-receipt)")
    rc.set_defaults(handler=cmd_receipt)

    cont = cs.add_parser("container", help="containers").add_subparsers(dest="container_command", metavar="ACTION", required=True)
    show = cont.add_parser("show", help="a container as central knows it")
    _client_args(show)
    show.add_argument("serial")
    show.set_defaults(handler=lambda a: _show(a, "GET", f"/api/containers/{a.serial}"))
    black = cont.add_parser("blacklist", help="blacklist a lost or stolen container")
    _client_args(black)
    black.add_argument("serial")
    black.add_argument("--reason", choices=("lost", "stolen"), required=True)
    black.set_defaults(handler=lambda a: _show(a, "POST", f"/api/containers/{a.serial}/blacklist", {"reason": a.reason}))
    review = cont.add_parser("review", help="accept a container flagged as manipulated")
    _client_args(review)
    review.add_argument("serial")
    review.add_argument("--note", default="")
    review.set_defaults(handler=lambda a: _show(a, "POST", f"/api/containers/{a.serial}/review", {"note": a.note}))

    rep = cs.add_parser("replacement", help="replacements of lost licenses").add_subparsers(
        dest="replacement_command", metavar="ACTION", required=True)
    ls = rep.add_parser("list", help="replacement requests")
    _client_args(ls)
    ls.add_argument("--state", choices=("pending", "approved", "refused"))
    ls.set_defaults(handler=lambda a: _show(a, "GET", "/api/replacements" + (f"?state={a.state}" if a.state else "")))
    approve = rep.add_parser("approve", help="approve a replacement by hand")
    _client_args(approve)
    approve.add_argument("id", type=int)
    approve.set_defaults(handler=lambda a: _show(a, "POST", f"/api/replacements/{a.id}/approve", {}))
    refuse = rep.add_parser("refuse", help="refuse a replacement")
    _client_args(refuse)
    refuse.add_argument("id", type=int)
    refuse.add_argument("--reason", default="")
    refuse.set_defaults(handler=lambda a: _show(a, "POST", f"/api/replacements/{a.id}/refuse", {"reason": a.reason}))

    api = cs.add_parser("api", help="call any API endpoint (see /api/openapi.json)")
    _client_args(api)
    api.add_argument("method", choices=("GET", "POST", "PATCH", "DELETE"))
    api.add_argument("path", help="e.g. /api/audit")
    api.add_argument("body", nargs="?", help="JSON body")
    api.set_defaults(handler=lambda a: _show(a, a.method, a.path, _json_arg(a.body, "body") if a.body else None, force_json=True))


# -- serving ---------------------------------------------------------------------------------


def load_firm(args: argparse.Namespace) -> Any:
    from licentia.central.service import FirmKey
    from licentia.cli.common import read_passphrase
    from licentia.cli.vendor import keystore_path
    from licentia.vendor.keystore import load_keystore

    keys = load_keystore(keystore_path(args), read_passphrase(args))
    return FirmKey(keys.firm_code, keys.name, keys.private_key, keys.public_key)


def cmd_serve(args: argparse.Namespace) -> int:
    from licentia.central.server import Limits, serve, tls_files

    if not 0 < args.port < 65536:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"port {args.port} is out of range")
    limits = Limits(args.limit_concurrency, args.timeout_keep_alive, args.max_header_bytes, args.max_body, args.backlog)
    for name, value in vars(limits).items():
        if value < 1:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"--{name.replace('_', '-')} must be at least 1")
    home = central_home(args)
    check_central_home(args, home)
    if args.insecure_http:
        if args.cert or args.key:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--insecure-http serves no certificate; drop --cert/--key")
        tls = None
    else:
        tls = tls_files(home, args.host, Path(args.cert) if args.cert else None, Path(args.key) if args.key else None)
    serve(home, load_firm(args), db_url=args.db, host=args.host, port=args.port, tls=tls, limits=limits)
    return 0


def check_central_home(args: argparse.Namespace, home: Path) -> None:
    """Refuse a central home, key, keystore or token another user can change (licentia.homes)."""
    from licentia.cli.vendor import keystore_path
    from licentia.homes import check_all

    checks = [(home.parent, "licentia home", False), (home, "central home", False),
              (home / "tls", "central TLS directory", False), (home / "tls" / "central.key", "central TLS key", True),
              (home / "admin.token", "admin token", True), (home / "central.db", "central database", False),
              (keystore_path(args), "firm keystore", False)]
    if args.key:
        checks.append((Path(args.key), "TLS key (--key)", True))
    passphrase = getattr(args, "passphrase_file", None) or os.environ.get("LICENTIA_PASSPHRASE_FILE")
    if passphrase:
        checks.append((Path(passphrase), "passphrase file", False))
    check_all(checks)


def cmd_blacklist_export(args: argparse.Namespace) -> int:
    from licentia.central.db import Database, sqlite_url
    from licentia.central.service import Central
    from licentia.fsutil import atomic_write

    firm = load_firm(args)
    home = central_home(args)
    if args.db is None and not (home / "central.db").exists():
        raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no central database in {home}; start `licentia central serve` first or give --db")
    db = Database(args.db or sqlite_url(home / "central.db"))
    try:
        db.migrate()
        central = Central(db, firm)
        data = central.export_blacklist("cli", int(time.time()))
        count = len(central.blacklist_entries())
    finally:
        db.dispose()
    atomic_write(Path(args.output), data, mode=0o644)
    print(f"blacklist of firm {firm.firm_code}: {count} container(s), signed, written to {args.output}")
    return 0


# -- operating a running central ------------------------------------------------------------


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"--{what} is not valid JSON") from None


def client(args: argparse.Namespace) -> Any:
    path = Path(args.token_file) if args.token_file else central_home(args) / "admin.token"
    try:
        token = path.read_text().strip()
    except OSError:
        raise LicentiaError(
            ErrorCode.UNAUTHORIZED, f"no API token at {path}; give --token-file (central writes admin.token at first start)"
        ) from None
    return central_client(args, args.central, token)


def _show(args: argparse.Namespace, method: str, path: str, body: Any = None, *, force_json: bool = False) -> int:
    with client(args) as c:
        result = c.call(method, path, body)
    _print(result, args.json or force_json)
    return 0


def _print(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, dict):
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, list | dict):
            value = json.dumps(value, sort_keys=True)
        print(f"{key:14} {value}")


def cmd_ticket_activate(args: argparse.Namespace) -> int:
    """The ticket is the credential: no API token is sent."""
    from licentia.cli.common import read_file
    from licentia.fsutil import atomic_write

    data = read_file(args.request, "request file")
    with central_client(args, args.central) as c:
        update, answer = c.activate(args.ticket, data, args.licenses, how="offline")
    atomic_write(Path(args.output), update, mode=0o644)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif "tmr_id" in answer:
        print(f"TMR license {answer['tmr_id']} (license {answer['license']} of ticket {args.ticket}): "
              f"one group update for three constituents: {args.output}")
        for part in answer["parts"]:
            print(f"  container {part['serial']}, step {part['counter']}")
    else:
        print(f"update for container {answer['serial']}, step {answer['counter']}: {args.output}")
    return 0


def cmd_receipt(args: argparse.Namespace) -> int:
    from licentia.cli.common import read_file

    data = read_file(args.receipt, "receipt file")
    with central_client(args, args.central) as c:
        answer = c.receipt(data)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif "tmr_id" in answer:
        print(f"TMR license {answer['tmr_id']}: all three constituents confirmed")
        for line in answer["confirmed"]:
            print(f"  {line}")
    else:
        print(f"container {answer['serial']}: step {answer['counter']} confirmed"
              + (" (already)" if answer.get("already") else ""))
    return 0


def cmd_product_add(args: argparse.Namespace) -> int:
    body = {"product_code": args.code, "name": args.name, "template": _json_arg(args.template, "template")}
    if args.policy:
        body["policy"] = _json_arg(args.policy, "policy")
    if args.tmr:
        body["tmr"] = True
    return _show(args, "POST", "/api/products", body)


def _wait(text: str) -> int:
    from licentia.cli.common import parse_duration

    return 0 if text.strip() in ("0", "0s", "0m", "0h", "0d") else parse_duration(text)


def cmd_customer_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"company": args.company, "site": args.site, "license_type": args.license_type}
    if args.host_name:
        body["server_host"] = args.host_name
    if args.ip:
        body["server_ip"] = args.ip
    if args.server_container:
        body["server_container"] = args.server_container
    if args.auto_activate_after:
        body["auto_activate_after"] = _wait(args.auto_activate_after)
    return _show(args, "POST", "/api/customers", body)


def cmd_customer_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.server_container:
        body["server_container"] = args.server_container
    if args.auto_activate_after:
        body["auto_activate_after"] = None if args.auto_activate_after == "default" else _wait(args.auto_activate_after)
    if not body:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "nothing to set: give --auto-activate-after or --server-container")
    return _show(args, "PATCH", f"/api/customers/{args.customer}", body)


def cmd_order_add(args: argparse.Namespace) -> int:
    line: dict[str, Any] = {"product_code": args.product, "count": args.count}
    if args.quantity is not None:
        line["quantity"] = args.quantity
    if args.options:
        line["options"] = _json_arg(args.options, "options")
    body: dict[str, Any] = {"lines": [line]}
    if args.customer:
        body["customer"] = args.customer
    if args.reference:
        body["reference"] = args.reference
    with client(args) as c:
        result = c.call("POST", "/api/orders", body)
    if args.json:
        _print(result, True)
    else:
        total = result["total"]
        seats = "unlimited seats" if total["seats"] is None else f"{total['seats']} seat(s)"
        print(f"ticket {result['ticket']}: {len(result['licenses'])} license(s) of product {args.product} added; "
              f"total {total['licenses']} license(s), {seats}" + (" (extends the order)" if result["extended"] else ""))
    return 0
