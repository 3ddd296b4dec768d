"""`licentia update …`: request files out, update files in, receipts out."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from licentia.cli.common import containers_dir, fingerprint, now, parse_serial, read_file
from licentia.containers import ContainerStore
from licentia.core import updates
from licentia.core.content import ContainerContent, ContainerKeys
from licentia.fsutil import atomic_write
from licentia.model import ContainerSerial, ErrorCode, Fingerprint, LicentiaError

if TYPE_CHECKING:
    from licentia.containers.soft import SoftContainer
    from licentia.containers.token import TokenContainer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("update", help="license updates through files: request, apply")
    us = p.add_subparsers(dest="update_command", metavar="ACTION", required=True)

    req = us.add_parser("request", help="write a request file for the vendor")
    req.add_argument("serial")
    req.add_argument("--firm-code", type=int, required=True)
    req.add_argument("-o", "--output", required=True)
    req.add_argument("--pin-file", help="file holding the token's user PIN (token containers)")
    req.set_defaults(handler=cmd_request)

    apply = us.add_parser("apply", help="apply an update file and write its receipt")
    apply.add_argument("file")
    apply.add_argument("--receipt", help="receipt file to write (default: FILE with .receipt)")
    apply.add_argument("--pin-file", help="file holding the token's user PIN (token containers)")
    apply.add_argument(
        "--container", metavar="SERIAL",
        help="with a TMR group update: the constituent to update (default: the one this home holds)",
    )
    apply.set_defaults(handler=cmd_apply)

    from licentia.cli import tmrgroup

    greq = us.add_parser(
        "group-request", help="combine the three constituent containers' request files of a TMR license"
    )
    greq.add_argument("requests", nargs=3, metavar="REQUEST", help="request file of each constituent container")
    greq.add_argument("-o", "--output", required=True, help="group request file to write (.lcgr)")
    greq.set_defaults(handler=tmrgroup.cmd_group_request)

    grc = us.add_parser(
        "group-receipt", help="combine the constituents' receipts of a TMR group update for the vendor"
    )
    grc.add_argument("receipts", nargs="+", metavar="RECEIPT", help="receipt file written by each upstream")
    grc.add_argument("-o", "--output", required=True, help="group receipt file to write (.lcgc)")
    grc.set_defaults(handler=tmrgroup.cmd_group_receipt)


def _store(args: argparse.Namespace, fp: Fingerprint) -> ContainerStore:
    # Soft containers from the home's directory; token containers through the PKCS#11
    # module and PIN that `licentia container` uses (see licentia.cli.container).
    from licentia.cli.container import token_pin

    return ContainerStore(containers_dir(args), fp, token_pin=token_pin(args, required=False))


def _open(args: argparse.Namespace, serial: ContainerSerial, fp: Fingerprint) -> SoftContainer | TokenContainer:
    return _store(args, fp).open_any(serial, now())


def _keys(container: SoftContainer | TokenContainer) -> ContainerKeys | None:
    return getattr(container, "keys", None)  # a token signs inside itself


def cmd_request(args: argparse.Namespace) -> int:
    fp = fingerprint(args)
    container = _open(args, parse_serial(args.serial), fp)
    env = updates.request_environment(fp, os.uname().nodename, args.firm_code)
    t = now()
    content = container.observe_clock(t)
    data = updates.make_request(content, args.firm_code, t, env, keys=_keys(container))
    try:
        atomic_write(Path(args.output), data, mode=0o644)
    except OSError as exc:
        raise LicentiaError(ErrorCode.REQUEST_WRITE_FAILED, f"cannot write {args.output}: {exc.strerror}") from None
    print(f"request for container {container.serial}, firm {args.firm_code}: {args.output}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    data = read_file(args.file, "update file")
    fp = fingerprint(args)
    group_note = ""
    from licentia.cli import tmrgroup

    if tmrgroup.is_group_update(data):  # a TMR group update: this home's constituent's part
        tmr_id, data = tmrgroup.group_part(args, data, _store(args, fp))
        group_note = f" (its part of TMR license {tmr_id}'s group update)"
    elif args.container:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--container is for TMR group updates only")
    header = updates.peek_update(data)
    container = _open(args, header.serial, fp)
    t = now()

    def change(content: ContainerContent) -> tuple[ContainerContent, updates.Applied]:
        applied = updates.apply_update(content, data, t, in_vm=fp.environment.in_vm, keys=_keys(container))
        return applied.content, applied

    applied = container.transact(change)
    receipt_path = Path(args.receipt) if args.receipt else Path(args.file).with_suffix(".receipt")
    atomic_write(receipt_path, applied.receipt, mode=0o644)
    print(f"applied update step {applied.counter} of firm {applied.firm_code} to container {container.serial}{group_note}:")
    for change_text in applied.changes:
        print(f"  {change_text}")
    print(f"receipt: {receipt_path}")
    told = _tell_runtime(args)
    if told:
        print(told)
    return 0


def _tell_runtime(args: argparse.Namespace) -> str:
    """Have the runtime serving this home read its containers again now (so the next
    access sees the update); what to tell the user, or "" when no runtime serves it."""
    from licentia.cli.home import home_from
    from licentia.sdk.admin import admin_client

    try:
        with admin_client(home_from(args)) as client:
            client.request("rescan")
    except LicentiaError as exc:
        if exc.code is ErrorCode.NO_LOCAL_RUNTIME:
            return ""
        return f"the running runtime will see it at its next rescan (telling it now failed: {exc.message})"
    except OSError:
        return ""  # a socket left by a runtime that is gone
    return "the running runtime serves the new content now"
