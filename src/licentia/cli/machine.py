"""`licentia machine show`: what this machine looks like to licentia (no raw values)."""

from __future__ import annotations

import argparse
import os

from licentia.cli.common import machine_root, print_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("machine", help="this machine's fingerprint and environment")
    ms = p.add_subparsers(dest="machine_command", metavar="ACTION", required=True)
    show = ms.add_parser("show", help="fingerprint properties (hashed), environment, binding strength")
    show.set_defaults(handler=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from licentia.binding import describe_machine

    print_json(describe_machine(machine_root(args), os.environ))
    return 0
