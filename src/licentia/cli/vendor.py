"""`licentia vendor …`: the firm keystore, and issuing update files from request files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from licentia.cli import tmrgroup
from licentia.cli.common import (
    now,
    parse_duration,
    parse_time,
    read_file,
    read_passphrase,
    vendor_dir,
)
from licentia.core import tmrgroup as tmrgroup_core, updates
from licentia.crypto import seal_hidden_data
from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError, ProductItem, VersionRange
from licentia.vendor.keystore import (
    FirmKeys,
    create_keystore,
    export_public,
    load_keystore,
    read_keystore_info,
)
from licentia.vendor.tmrids import next_tmr_id, tmr_ids_path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("vendor", help="firm keys and update files (the vendor's side)")
    vs = p.add_subparsers(dest="vendor_command", metavar="ACTION", required=True)

    init = vs.add_parser("init", help="create the firm keystore")
    init.add_argument("--firm-code", type=int, required=True)
    init.add_argument("--name", required=True)
    _keystore_args(init)
    init.set_defaults(handler=cmd_init)

    show = vs.add_parser("show", help="show the firm keystore (no secrets)")
    _keystore_args(show, passphrase=False)
    show.set_defaults(handler=cmd_show)

    exp = vs.add_parser("export-public", help="write the firm public key programs embed")
    _keystore_args(exp, passphrase=False)
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")
    exp.set_defaults(handler=cmd_export_public)

    issue = vs.add_parser(
        "issue",
        help="write an update file for the container of a request file (three, for a TMR license)",
    )
    issue.add_argument(
        "request", nargs="+",
        help="request file from `licentia update request`; with --tmr, the three constituent containers'",
    )
    issue.add_argument(
        "-o", "--output", required=True, action="append",
        help="update file to write; with --tmr, three (-o A -o B -o C, in the order of the requests)",
    )
    issue.add_argument("--product", type=int, help="product code of the item to add or change")
    issue.add_argument("--item-id", type=int, help="item to change (default: a new item)")
    issue.add_argument("--remove", type=int, metavar="ITEM_ID", action="append", default=[], help="remove this item")
    issue.add_argument("--lock", action="store_true", help="lock all items of the firm in the container")
    issue.add_argument("--unlock", action="store_true", help="unlock the firm's items")
    issue.add_argument("--quantity", default="1", help="concurrent seats: N, 0 (local only) or unlimited")
    issue.add_argument("--expires", help="expiration date (YYYY-MM-DD or ISO time, UTC)")
    issue.add_argument("--activates", help="activation date: not valid before")
    issue.add_argument("--usage-period", help="valid for this long from first use, e.g. 30d")
    issue.add_argument("--units", type=int, help="unit counter (pay per use)")
    issue.add_argument("--features", default="0", help="feature map, e.g. 0x0f")
    issue.add_argument("--text", default="", help="text shown for the item")
    issue.add_argument("--maintenance-from", help="maintenance period start date")
    issue.add_argument("--maintenance-until", help="maintenance period end date")
    issue.add_argument("--versions", help="permitted program versions, e.g. 2.0-3")
    issue.add_argument("--protected-data", default="", help="vendor data programs can read (text)")
    issue.add_argument("--hidden-data", default="", help="data only the vendor's key can read (text)")
    issue.add_argument("--checkpoint", help="checkpoint period, e.g. 30d: lapses unless renewed")
    issue.add_argument("--borrow-max", type=_borrow_max, default=0,
                       help="longest borrow of a seat, e.g. 30d (0, the default: may not be borrowed)")
    issue.add_argument(
        "--tmr", action="store_true",
        help="a TMR license: the same item for three constituent containers, under the firm's next TMR id",
    )
    issue.add_argument(
        "--tmr-id", type=int,
        help="the TMR id of an existing TMR license (to change it, or to re-issue a constituent)",
    )
    issue.add_argument("--deny-vm", action="store_true", help="refuse the item in virtual machines")
    issue.add_argument("--disabled", action="store_true", help="issue the item disabled")
    _keystore_args(issue)
    issue.set_defaults(handler=cmd_issue)

    check = vs.add_parser(
        "check-receipt", help="check a TMR group receipt: every constituent applied its part of the group update"
    )
    check.add_argument("receipt", help="group receipt file from `licentia update group-receipt` (.lcgc)")
    check.add_argument("--update", required=True, help="the group update file it answers (.lcgu)")
    _keystore_args(check, passphrase=False)
    check.set_defaults(handler=cmd_check_receipt)


def _keystore_args(p: argparse.ArgumentParser, *, passphrase: bool = True) -> None:
    p.add_argument("--keystore", help="firm keystore file (default: the one in the home's vendor/)")
    if passphrase:
        p.add_argument("--passphrase-file", help="file holding the keystore passphrase")


def keystore_path(args: argparse.Namespace, firm_code: int | None = None) -> Path:
    if args.keystore:
        return Path(args.keystore)
    directory = vendor_dir(args)
    if firm_code is not None:
        return directory / f"firm-{firm_code}.keystore"
    found = sorted(directory.glob("firm-*.keystore")) if directory.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise LicentiaError(ErrorCode.KEYSTORE_NOT_FOUND, f"no firm keystore in {directory}")
    raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"several keystores in {directory}; name one with --keystore")


def cmd_init(args: argparse.Namespace) -> int:
    path = keystore_path(args, args.firm_code)
    passphrase = read_passphrase(args, confirm=True)
    info = create_keystore(path, args.firm_code, args.name, passphrase)
    print(f"firm {info.firm_code} ({info.name}): keystore {path}")
    print(f"public key id {info.key_id}; export it with `licentia vendor export-public`")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = keystore_path(args)
    info = read_keystore_info(path)
    print(f"firm code   {info.firm_code}")
    print(f"name        {info.name}")
    print(f"public key  {info.public_key.hex()} (id {info.key_id})")
    print(f"keystore    {path} (private key wrapped by passphrase)")
    return 0


def cmd_export_public(args: argparse.Namespace) -> int:
    text = export_public(read_keystore_info(keystore_path(args)))
    if args.output:
        atomic_write(Path(args.output), text.encode(), mode=0o644)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    if args.tmr:
        return _issue_tmr(args)
    if len(args.request) != 1 or len(args.output) != 1:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            "one request file and one -o output, or --tmr with three of each",
        )
    data = read_file(args.request[0], "request file")
    if tmrgroup.is_group_request(data):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{args.request[0]} is a TMR group request: answer it with --tmr")
    request = updates.read_request(data)
    keys = _keys_for(args, request)
    ops = _operations(args, request, keys.private_key, keys.firm_code, args.tmr_id)
    data = updates.issue_update(request, keys.firm_code, keys.private_key, ops, now())
    atomic_write(Path(args.output[0]), data, mode=0o644)
    print(f"update for container {request.serial}, firm {keys.firm_code}, step {request.update_counter + 1}: {args.output[0]}")
    return 0


def _issue_tmr(args: argparse.Namespace) -> int:
    """One TMR license: the same item, under one TMR id, for three constituent containers."""
    if len(args.request) == 1 and len(args.output) == 1 and tmrgroup.is_group_request(
        read_file(args.request[0], "request file")
    ):
        _check_tmr_options(args)
        return tmrgroup.issue_group(
            args,
            lambda firm: load_keystore(
                keystore_path(args, None if args.keystore else firm), read_passphrase(args)
            ),
            lambda keys: _item_from_args(args, keys.private_key, keys.firm_code, tmr_id=None),
            lambda keys: args.tmr_id if args.tmr_id is not None else next_tmr_id(
                tmr_ids_path(keystore_path(args, None if args.keystore else keys.firm_code), keys.firm_code),
                keys.firm_code,
            ),
        )
    if len(args.request) != 3 or len(args.output) != 3:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"--tmr needs a group request file and one -o output, or three request files and three -o outputs "
            f"(got {len(args.request)} and {len(args.output)})",
        )
    _check_tmr_options(args)
    requests = [updates.read_request(read_file(r, "request file")) for r in args.request]
    firms = {r.firm_code for r in requests}
    if len(firms) != 1:
        raise LicentiaError(ErrorCode.UPDATE_WRONG_FIRM, f"the three requests name different firms: {sorted(firms)}")
    serials = [str(r.serial) for r in requests]
    if len(set(serials)) != 3:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"the three constituents must be three containers, not {', '.join(serials)}"
        )
    if len({str(Path(o).resolve()) for o in args.output}) != 3:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "name three different -o outputs")
    path = keystore_path(args, None if args.keystore else requests[0].firm_code)
    keys = _keys_for(args, requests[0])
    # one item for all three (sealed hidden data included), checked before a TMR id is taken
    item = _item_from_args(args, keys.private_key, keys.firm_code, tmr_id=None)
    tmr_id = args.tmr_id if args.tmr_id is not None else next_tmr_id(tmr_ids_path(path, keys.firm_code), keys.firm_code)
    item = tmrgroup_core.tmr_item(item, tmr_id, requests)
    at = now()
    files = []
    for request in requests:
        item_id = args.item_id if args.item_id is not None else request.next_item_id()
        files.append(updates.issue_update(request, keys.firm_code, keys.private_key, [updates.PutItem(item_id, item)], at))
    for output, data in zip(args.output, files, strict=True):
        atomic_write(Path(output), data, mode=0o644)
    print(f"TMR license {tmr_id}: firm {keys.firm_code}, product {args.product}, three constituents")
    for request, output in zip(requests, args.output, strict=True):
        print(f"  container {request.serial}, step {request.update_counter + 1}: {output}")
    return 0


def _check_tmr_options(args: argparse.Namespace) -> None:
    if args.product is None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--tmr needs --product with the item's options")
    if args.remove or args.lock or args.unlock:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--tmr issues one item; remove or lock in separate updates")
    if str(args.quantity).strip() == "0":
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, "a TMR license serves a network; quantity 0 (local only) does not fit"
        )


def cmd_check_receipt(args: argparse.Namespace) -> int:
    def pinned(firm_code: int) -> bytes | None:
        """The firm key of this home's keystore (or --keystore): the group update must be signed by it."""
        try:
            return read_keystore_info(keystore_path(args, None if args.keystore else firm_code)).public_key
        except LicentiaError as exc:
            if exc.code is ErrorCode.KEYSTORE_NOT_FOUND:
                raise LicentiaError(
                    ErrorCode.KEYSTORE_NOT_FOUND,
                    f"no keystore of firm {firm_code} here: check group receipts where the firm's keystore is",
                ) from None
            raise

    return tmrgroup.cmd_check_receipt(args, pinned)


def _keys_for(args: argparse.Namespace, request: updates.Request) -> FirmKeys:
    keys = load_keystore(keystore_path(args, None if args.keystore else request.firm_code), read_passphrase(args))
    if keys.firm_code != request.firm_code:
        raise LicentiaError(
            ErrorCode.UPDATE_WRONG_FIRM,
            f"the request asks for firm {request.firm_code} but the keystore is firm {keys.firm_code}",
        )
    return keys


def _operations(
    args: argparse.Namespace, request: updates.Request, firm_private: bytes, firm_code: int, tmr_id: int | None
) -> list[updates.Operation]:
    ops: list[updates.Operation] = [updates.RemoveItem(i) for i in args.remove]
    if args.lock:
        ops.append(updates.LockFirm())
    if args.unlock:
        ops.append(updates.UnlockFirm())
    if args.product is not None:
        item_id = args.item_id
        if item_id is None:
            item_id = request.next_item_id()
        ops.append(updates.PutItem(item_id, _item_from_args(args, firm_private, firm_code, tmr_id=tmr_id)))
    elif args.item_id is not None:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--item-id needs --product with the item's new options")
    if not ops:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "nothing to issue: give --product, --remove, --lock or --unlock")
    return ops


def _item_from_args(
    args: argparse.Namespace, firm_private: bytes, firm_code: int, *, tmr_id: int | None
) -> ProductItem:
    q = str(args.quantity).strip().lower()
    if q == "unlimited":
        quantity: int | None = None
    elif q.isdigit():
        quantity = int(q)
    else:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"--quantity {args.quantity!r}: use a number or 'unlimited'")
    try:
        features = int(str(args.features), 0)
    except ValueError:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"--features {args.features!r} is not a number") from None
    hidden = b""
    if args.hidden_data:
        hidden = seal_hidden_data(firm_private, firm_code, args.hidden_data.encode())
    return ProductItem(
        product_code=args.product,
        quantity=quantity,
        feature_map=features,
        expires_at=parse_time(args.expires) if args.expires else None,
        activates_at=parse_time(args.activates) if args.activates else None,
        usage_period=parse_duration(args.usage_period) if args.usage_period else None,
        units=args.units,
        maintenance_from=parse_time(args.maintenance_from) if args.maintenance_from else None,
        maintenance_until=parse_time(args.maintenance_until) if args.maintenance_until else None,
        versions=VersionRange.parse(args.versions) if args.versions else None,
        text=args.text,
        protected_data=args.protected_data.encode(),
        hidden_data=hidden,
        tmr_id=tmr_id,
        borrow_max=args.borrow_max,
        checkpoint_period=parse_duration(args.checkpoint) if args.checkpoint else None,
        vm_allowed=not args.deny_vm,
        disabled=args.disabled,
    )


def _borrow_max(text: str) -> int:
    from licentia.cli.common import parse_duration

    return 0 if text.strip() == "0" else parse_duration(text)
