"""The `licentia` command: one module per command group, each with `register(subparsers)`.

A handler receives the parsed arguments and returns an exit status. A refusal is a
`LicentiaError`: it is printed as "error CODE (name): what happened — what to do" and the
process exits with status 2, so scripts can tell a refusal from a crash.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from licentia.model import LicentiaError

# Command groups, in the order `licentia --help` lists them.
GROUPS = (
    "licentia.cli.vendor",
    "licentia.cli.container",
    "licentia.cli.update",
    "licentia.cli.machine",
    "licentia.cli.runtime",
    "licentia.cli.server",
    "licentia.cli.acl",
    "licentia.cli.report",
    "licentia.cli.borrow",
    "licentia.cli.webadmin",
    "licentia.cli.access",
    "licentia.cli.central",
    "licentia.cli.activate",
    "licentia.cli.vault",
    "licentia.cli.tmr",
    "licentia.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="licentia",
        description="licentia: software licensing — containers, runtime, vendor tools.",
    )
    parser.add_argument(
        "--home",
        help="licentia home (containers, keys, configuration); default $LICENTIA_HOME "
        "or ~/.local/share/licentia (/var/lib/licentia for root)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, machine_root: Path = Path("/")) -> int:
    """Run the command `argv`; `machine_root` is where the machine is read (tests only)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.machine_root = Path(machine_root)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        return int(handler(args) or 0)
    except LicentiaError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
