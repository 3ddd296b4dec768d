"""`licentia activate`, `licentia return`, `licentia sync`: online round trips with central.

    licentia activate TICKET --central URL [--container SERIAL] [--license ID ...]
    licentia return TICKET --central URL [--container SERIAL] [--license ID ...]
    licentia sync --central URL [--container SERIAL]
    licentia replace TICKET LOST_SERIAL --central URL [--same-device [--container SERIAL]]

central is trusted by --central-pin, --central-ca, or the pin stored at the first connection
(HOME/tls/pins/central_HOST_PORT.pin).

Each opens the soft container, writes a request for the vendor's firm, sends it, applies the
update central answers with (atomically, in the container), and sends the receipt back.
If the receipt cannot be sent, nothing is lost: the container's next request tells central
the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from licentia.model import ErrorCode, LicentiaError

DEFAULT_URL = "https://127.0.0.1:22360"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    act = sub.add_parser("activate", help="activate a ticket into a container, online")
    act.add_argument("ticket")
    _args(act)
    act.add_argument("--license", type=int, action="append", dest="licenses", help="only this license of the ticket (repeatable)")
    act.set_defaults(handler=cmd_activate)

    ret = sub.add_parser("return", help="give a ticket's licenses back to central, online")
    ret.add_argument("ticket")
    _args(ret)
    ret.add_argument("--license", type=int, action="append", dest="licenses", help="only this license of the ticket (repeatable)")
    ret.set_defaults(handler=cmd_return)

    syn = sub.add_parser("sync", help="sync a container with central: checkpoints, signed time, pending changes")
    _args(syn)
    syn.set_defaults(handler=cmd_sync)

    rep = sub.add_parser("replace", help="ask central to replace a ticket's licenses held in a lost container")
    rep.add_argument("ticket")
    rep.add_argument("lost", metavar="LOST_SERIAL", help="serial of the lost (or broken) container")
    _args(rep)
    rep.add_argument("--same-device", action="store_true",
                     help="the new container is on the same machine (it sends its request to prove it)")
    rep.set_defaults(handler=cmd_replace)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=argparse.SUPPRESS, help="licentia home holding the containers")
    from licentia.cli.central import central_tls_args

    p.add_argument("--central", default=os.environ.get("LICENTIA_CENTRAL", DEFAULT_URL), help="central's URL")
    central_tls_args(p)
    p.add_argument("--container", help="container serial (default: the only container of this home)")


def _open(args: argparse.Namespace) -> Any:
    from licentia.cli.common import containers_dir, fingerprint, now, parse_serial
    from licentia.containers import ContainerStore
    from licentia.containers.soft import list_paths, read_header

    fp = fingerprint(args)
    store = ContainerStore(containers_dir(args), fp)
    if args.container:
        serial = parse_serial(args.container)
    else:
        paths = list_paths(containers_dir(args))
        if len(paths) != 1:
            raise LicentiaError(
                ErrorCode.CONTAINER_NOT_FOUND,
                f"{'no container' if not paths else 'several containers'} in {containers_dir(args)}; "
                "name one with --container SERIAL" + ("" if paths else " or create one with `licentia container create`"),
            )
        serial = read_header(paths[0]).serial
    return store.open(serial, now()), fp


def _round_trip(args: argparse.Namespace, send: Any) -> int:
    from licentia.cli.central import central_client
    from licentia.cli.common import now
    from licentia.core import updates
    from licentia.core.content import ContainerContent

    container, fp = _open(args)
    with central_client(args, args.central) as central:
        firm_code = int(central.health()["firm_code"])
        t = now()
        content = container.observe_clock(t)
        environment = updates.request_environment(fp, os.uname().nodename, firm_code)
        request = updates.make_request(content, firm_code, t, environment)
        update, info = send(central, request)
        if not update:
            print(f"container {container.serial}: in step with central; nothing to renew, deliver or revoke")
            return 0
        t = now()

        def change(c: ContainerContent) -> tuple[ContainerContent, updates.Applied]:
            applied = updates.apply_update(c, update, t, in_vm=fp.environment.in_vm)
            return applied.content, applied

        applied = container.transact(change)
        print(f"container {container.serial}: applied update step {applied.counter} of firm {firm_code}")
        for text in applied.changes:
            print(f"  {text}")
        try:
            central.receipt(applied.receipt)
            print("receipt confirmed by central")
        except LicentiaError as exc:
            if exc.code != ErrorCode.NETWORK_FAULT:
                raise
            print(f"the receipt could not be sent ({exc.message}); the next contact confirms it", file=sys.stderr)
    if info.get("purpose") == "lock":
        raise LicentiaError(
            ErrorCode.LOCKED,
            f"container {container.serial} is on the vendor's blacklist (reported lost or stolen): central "
            f"gave it no license and locked its licenses of firm {firm_code}",
        )
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    return _round_trip(args, lambda c, req: c.activate(args.ticket, req, args.licenses, how="online"))


def cmd_return(args: argparse.Namespace) -> int:
    return _round_trip(args, lambda c, req: c.return_licenses(args.ticket, req, args.licenses))


def cmd_sync(args: argparse.Namespace) -> int:
    return _round_trip(args, lambda c, req: c.sync(req))


def cmd_replace(args: argparse.Namespace) -> int:
    from licentia.central.client import CentralClient
    from licentia.cli.common import fmt_time, now
    from licentia.core import updates

    request = None
    if args.same_device:
        container, fp = _open(args)
        with CentralClient(args.central) as central:
            firm_code = int(central.health()["firm_code"])
        t = now()
        content = container.observe_clock(t)
        request = updates.make_request(content, firm_code, t, updates.request_environment(fp, os.uname().nodename, firm_code))
    with CentralClient(args.central) as central:
        result = central.replace(args.ticket, args.lost, same_device=args.same_device, request=request)
    for r in result["replacements"]:
        decided = f"by {r['decided_by']}" if r["decided_by"] else "(waits for the vendor)"
        print(f"replacement {r['id']}: license {r['license']} {r['state']} {decided} "
              f"({r['reason']}) at {fmt_time(r['decided_at'] or r['requested_at'])}")
    print(f"activate the licenses now: licentia activate {result['ticket']}"
          + (f" --container {args.container}" if args.container else ""))
    return 0
