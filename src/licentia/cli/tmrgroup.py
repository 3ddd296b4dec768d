"""The group update of a TMR license's three constituents, on the command line.

    licentia update group-request a.lcrq b.lcrq c.lcrq -o group.lcgr   (anyone: combines)
    licentia vendor issue group.lcgr --tmr --product … -o group.lcgu   (the vendor)
    licentia update apply group.lcgu --receipt up1.receipt             (each upstream: its part)
    licentia update group-receipt up1.receipt up2.receipt up3.receipt -o group.lcgc
    licentia vendor check-receipt group.lcgc --update group.lcgu       (the vendor)

The decisions are `licentia.core.tmrgroup`'s; this module reads and writes the files.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from licentia.cli.common import now, read_file
from licentia.containers import ContainerStore
from licentia.core import tmrgroup
from licentia.fsutil import atomic_write
from licentia.model import ContainerKind, ContainerSerial, ErrorCode, LicentiaError, ProductItem
from licentia.vendor.keystore import FirmKeys


def is_group_update(data: bytes) -> bool:
    return data[: len(tmrgroup.GROUP_UPDATE_MAGIC)] == tmrgroup.GROUP_UPDATE_MAGIC


def is_group_request(data: bytes) -> bool:
    return data[: len(tmrgroup.GROUP_REQUEST_MAGIC)] == tmrgroup.GROUP_REQUEST_MAGIC


def cmd_group_request(args: argparse.Namespace) -> int:
    files = [read_file(r, "request file") for r in args.requests]
    data = tmrgroup.make_group_request(files)
    group = tmrgroup.read_group_request(data)
    atomic_write(Path(args.output), data, mode=0o644)
    print(f"group request for firm {group.firm_code}, constituents "
          f"{', '.join(str(r.serial) for r in group.requests)}: {args.output}")
    return 0


def cmd_group_receipt(args: argparse.Namespace) -> int:
    data = tmrgroup.make_group_receipt([read_file(r, "receipt file") for r in args.receipts])
    receipts = tmrgroup.read_group_receipt(data)
    atomic_write(Path(args.output), data, mode=0o644)
    print(f"group receipt of containers {', '.join(str(r.serial) for r in receipts)}: {args.output}")
    return 0


def group_part(args: argparse.Namespace, data: bytes, store: ContainerStore) -> tuple[int, bytes]:
    """(TMR id, the ordinary update file) of the group update's part for this home's constituent."""
    group = tmrgroup.read_group_update(data)
    if args.container:
        held: list[ContainerSerial] = [ContainerSerial.parse(args.container)]
    else:
        held = [p.serial for p in group.parts if _held(store, p.serial)]
    return group.tmr_id, tmrgroup.part_for(group, held).update


def _held(store: ContainerStore, serial: ContainerSerial) -> bool:
    if serial.kind is ContainerKind.TOKEN:
        return str(serial) in store.token_registry()["containers"]
    return store.path_of(serial).exists()


def issue_group(
    args: argparse.Namespace,
    load_keys: Callable[[int], FirmKeys],
    make_item: Callable[[FirmKeys], ProductItem],
    take_tmr_id: Callable[[FirmKeys], int],
) -> int:
    """`vendor issue group.lcgr --tmr …`: one group update answering a group request."""
    group = tmrgroup.read_group_request(read_file(args.request[0], "group request file"))
    keys = load_keys(group.firm_code)
    if keys.firm_code != group.firm_code:
        raise LicentiaError(
            ErrorCode.UPDATE_WRONG_FIRM,
            f"the group request asks for firm {group.firm_code} but the keystore is firm {keys.firm_code}",
        )
    item = make_item(keys)  # checked before a TMR id is taken
    tmr_id = take_tmr_id(keys)
    data = tmrgroup.issue_group_update(
        group, keys.firm_code, keys.private_key, dataclasses.replace(item, tmr_id=tmr_id), tmr_id, now(),
        item_id=args.item_id,
    )
    atomic_write(Path(args.output[0]), data, mode=0o644)
    print(f"TMR license {tmr_id}: firm {keys.firm_code}, product {item.product_code}, "
          f"one group update for three constituents: {args.output[0]}")
    for part in tmrgroup.read_group_update(data).parts:
        print(f"  container {part.serial}, step {part.counter_to}, item {part.item_id}")
    return 0


def cmd_check_receipt(args: argparse.Namespace, firm_public_key: Callable[[int], bytes | None]) -> int:
    """`vendor check-receipt group.lcgc --update group.lcgu`: all three constituents confirmed?"""
    update = read_file(args.update, "group update file")
    group = tmrgroup.read_group_update(update)
    group = tmrgroup.read_group_update(update, firm_public_key(group.firm_code))
    receipts = tmrgroup.read_group_receipt(read_file(args.receipt, "group receipt file"))
    check = tmrgroup.check_group_receipt(group, receipts)
    for line in check.confirmed:
        print(f"  confirmed: {line}")
    for line in check.problems:
        print(f"  NOT confirmed: {line}")
    if not check.complete:
        raise LicentiaError(
            ErrorCode.TMR_GROUP_INCOMPLETE,
            f"TMR license {check.tmr_id}: {len(check.problems)} problem(s) in the group receipt: "
            + "; ".join(check.problems),
        )
    print(f"TMR license {check.tmr_id}: all three constituents confirmed")
    return 0
