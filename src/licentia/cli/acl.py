"""`licentia acl …`: the network server's access list (`acl.toml` in the home).

Every edit rewrites the file atomically under a lock; a running runtime reloads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from licentia.cli.common import fmt_time, parse_time, print_json, print_table
from licentia.cli.home import home_from
from licentia.core.acl import AccessList
from licentia.model import ErrorCode, LicentiaError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("acl", help="access list of a network server: who may take which seats")
    ss = p.add_subparsers(dest="acl_command", metavar="ACTION", required=True)

    ls = ss.add_parser("list", help="show the rules, scope by scope, in the order they are consulted")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_list)

    add = ss.add_parser("add", help="add a rule")
    add.add_argument("name", help="the rule's name (shown in refusals and reports)")
    add.add_argument("--scope", default="server",
                     help='"server" (default), "container SERIAL", "firm FIRM" or "product FIRM:PRODUCT"')
    add.add_argument("--deny", action="store_true", help="a deny rule (default: allow)")
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", help="user name (repeat for several)")
    who.add_argument("--host", action="append", help="host name or address (repeat for several)")
    who.add_argument("--subnet", action="append", help="subnet such as 10.1.0.0/16 (repeat for several)")
    who.add_argument("--group", action="append", help="directory group (repeat for several)")
    who.add_argument("--anyone", action="store_true", help="everyone")
    add.add_argument("--reserve", type=int, default=0, help="seats reserved for those the rule matches")
    add.add_argument("--max", type=int, help="at most this many seats for those the rule matches")
    add.add_argument("--expires", help="the rule ends at this date (YYYY-MM-DD or ISO date-time, UTC)")
    add.add_argument("--note", default="")
    add.add_argument("--position", type=int, help="insert at this position (1 = first)")
    add.set_defaults(handler=cmd_add)

    rm = ss.add_parser("remove", help="remove a rule by name")
    rm.add_argument("name")
    rm.set_defaults(handler=cmd_remove)

    de = ss.add_parser("default", help="the action when no rule of a scope matches")
    de.add_argument("scope", help='"server", "container SERIAL", "firm FIRM" or "product FIRM:PRODUCT"')
    de.add_argument("action", choices=["allow", "deny", "unset"])
    de.set_defaults(handler=cmd_default)

    ck = ss.add_parser("check", help="what the list decides for one client and item (nothing changes)")
    ck.add_argument("--firm", type=int, required=True)
    ck.add_argument("--product", type=int, required=True)
    ck.add_argument("--container", default="", help="the container serial (for container rules)")
    ck.add_argument("--user", default="")
    ck.add_argument("--host", default="")
    ck.add_argument("--address", default="")
    ck.add_argument("--group", action="append", default=[], help="a group of the user (repeat)")
    ck.add_argument("--directory", action="store_true",
                    help="ask the directory of runtime.toml's [directory] for the user's groups")
    ck.add_argument("--quantity", type=int, help="the item's seats (default: unlimited)")
    ck.add_argument("--held", action="append", default=[], metavar="RULE=N",
                    help="seats held now and charged to RULE (\"free\" for the free pool); repeat")
    ck.add_argument("--at", help="decide as at this time (default now)")
    ck.set_defaults(handler=cmd_check)

    im = ss.add_parser("import-flexnet", help="read a FlexNet options file into rules")
    im.add_argument("file")
    im.add_argument("--feature", action="append", default=[], metavar="NAME=FIRM:PRODUCT",
                    help="the licentia product of a FlexNet feature (repeat)")
    im.add_argument("--replace", action="store_true", help="replace the whole list instead of adding to it")
    im.add_argument("--dry-run", action="store_true", help="show what would be written; change nothing")
    im.set_defaults(handler=cmd_import)


def _path(args: argparse.Namespace) -> Path:
    from licentia.runtime.acl import acl_path

    return acl_path(home_from(args))


def cmd_list(args: argparse.Namespace) -> int:
    from licentia.core.acl import PRECEDENCE, iter_scopes, to_document
    from licentia.runtime.acl import load

    path = _path(args)
    acl = load(path)
    if args.json:
        print_json(to_document(acl))
        return 0
    if not acl.rules and not acl.defaults:
        print(f"the access list is empty: every client may take any free seat ({path} does not exist"
              f"{'' if not path.exists() else ' or holds no rule'}); add a rule with `licentia acl add`")
        return 0
    if not acl.enabled:
        print("the access list is DISABLED (enabled = false): the runtime does not apply it")
    print(f"precedence: {' > '.join(level.value for level in PRECEDENCE)}; "
          "in a scope, deny wins over allow")
    for scope in iter_scopes(acl):
        default = acl.defaults.get(scope)
        print()
        print(f"[{scope}]" + (f"  default: {default.value}" if default else ""))
        rules = [r for r in acl.rules if r.scope == scope]
        if not rules:
            continue
        rows: list[tuple[str, ...]] = [("  NAME", "ACTION", "WHO", "RESERVE", "MAX", "EXPIRES")]
        for r in rules:
            who = "anyone" if r.match.value == "anyone" else f"{r.match.value} {','.join(r.values)}"
            rows.append((f"  {r.name}", r.action.value, who, str(r.reserve or "-"),
                         "-" if r.limit is None else str(r.limit),
                         fmt_time(int(r.expires)) if r.expires is not None else "-"))
        print_table(rows)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from licentia.core.acl import rule_from_fields, with_rule
    from licentia.runtime.acl import edit

    fields: dict[str, object] = {"name": args.name, "scope": args.scope, "action": "deny" if args.deny else "allow",
                                 "reserve": args.reserve, "max": args.max, "note": args.note}
    for key in ("user", "host", "subnet", "group"):
        values = getattr(args, key)
        if values:
            fields[key] = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if args.anyone:
        fields["anyone"] = True
    if args.expires:
        fields["expires"] = parse_time(args.expires)
    rule = rule_from_fields(fields)

    def change(acl: AccessList) -> AccessList:
        if any(r.name == rule.name for r in acl.rules):
            raise LicentiaError(ErrorCode.ALREADY_EXISTS, f"a rule named {rule.name!r} exists already",
                                "choose another name, or remove it first with `licentia acl remove`")
        return with_rule(acl, rule, args.position)

    acl = edit(_path(args), change)
    print(f"added {rule.describe()}; {len(acl.rules)} rule{'s' if len(acl.rules) != 1 else ''} in {_path(args)}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from licentia.core.acl import without_rule
    from licentia.runtime.acl import edit

    acl = edit(_path(args), lambda a: without_rule(a, args.name))
    print(f"removed rule {args.name!r}; {len(acl.rules)} rule{'s' if len(acl.rules) != 1 else ''} left")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    from licentia.core.acl import Action, Scope, with_default
    from licentia.runtime.acl import edit

    scope = Scope.parse(args.scope)
    action = None if args.action == "unset" else Action(args.action)
    edit(_path(args), lambda a: with_default(a, scope, action))
    print(f"default at {scope}: {args.action}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import time

    from licentia.core.acl import Held, Identity, decide
    from licentia.core.seats import ItemKey
    from licentia.runtime.acl import load

    acl = load(_path(args))
    groups: frozenset[str] | None = frozenset(args.group)
    if args.directory:
        from licentia.runtime import config
        from licentia.runtime.directory import Directory, DirectoryConfig

        home = home_from(args)
        settings = DirectoryConfig.from_settings(config.build(home), home)
        if settings is None:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "runtime.toml sets no [directory] url",
                                "docs/admin.md shows how to name the LDAP or Active Directory server")
        directory = Directory(settings)
        found = directory.groups(args.user, time.monotonic())
        if found is None:
            print(f"the directory did not answer: {directory.last_error}", file=sys.stderr)
        groups = None if found is None else frozenset(args.group) | found
    held = Held()
    for entry in args.held:
        name, _, count = entry.partition("=")
        try:
            n = int(count)
        except ValueError:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"--held {entry!r} is not RULE=N") from None
        for _ in range(n):
            held.take(None if name == "free" else name, [name] if name != "free" and _has_max(acl, name) else [])
    now = parse_time(args.at) if args.at else time.time()
    key = ItemKey(args.container, args.firm, args.product)
    who = Identity(args.user, args.host, args.address, groups)
    d = decide(acl, key, who, args.quantity, held, now)
    what = f"product {args.firm}:{args.product}" + (f" in container {args.container}" if args.container else "")
    shown = "unknown (the directory did not answer)" if groups is None else ", ".join(sorted(groups)) or "none"
    print(f"client: user {args.user or '-'}, host {args.host or '-'}, address {args.address or '-'}, groups {shown}")
    if d.granted:
        pool = f'rule "{d.charge}"' if d.charge else "the free pool"
        decided = f' (decided by rule "{d.rule}")' if d.rule else " (no rule matches: the default action allows)"
        print(f"grant: a seat of {what}, charged to {pool}{decided}")
        if d.counted:
            print(f"counts against the maximum of: {', '.join(d.counted)}")
        return 0
    raise d.error()


def _has_max(acl: AccessList, name: str) -> bool:
    try:
        return acl.rule(name).limit is not None
    except LicentiaError:
        return False


def cmd_import(args: argparse.Namespace) -> int:
    from licentia.core.acl import AccessList, to_toml
    from licentia.core.flexnet import parse_options
    from licentia.runtime.acl import edit, load

    features: dict[str, tuple[int, int]] = {}
    for entry in args.feature:
        name, _, target = entry.partition("=")
        firm, _, product = target.partition(":")
        try:
            features[name] = (int(firm), int(product))
        except ValueError:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                f"--feature {entry!r} is not NAME=FIRM:PRODUCT (e.g. cad_pro=10001:7)") from None
    try:
        text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LicentiaError(ErrorCode.UPDATE_READ_FAILED, f"cannot read {args.file}: {exc.strerror}") from None
    imported = parse_options(text, features, Path(args.file).name)

    def change(acl: AccessList) -> AccessList:
        base = AccessList(enabled=acl.enabled) if args.replace else acl
        return imported.merged_into(base)

    if args.dry_run:
        sys.stdout.write(to_toml(change(load(_path(args)))))
    else:
        edit(_path(args), change)
    print(f"{'would import' if args.dry_run else 'imported'} {len(imported.rules)} rule"
          f"{'s' if len(imported.rules) != 1 else ''} and {len(imported.defaults)} default"
          f"{'s' if len(imported.defaults) != 1 else ''} from {args.file}", file=sys.stderr if args.dry_run else sys.stdout)
    if imported.notes:
        print(f"not translated ({len(imported.notes)}):", file=sys.stderr if args.dry_run else sys.stdout)
        for n in imported.notes:
            print(f"  {n}", file=sys.stderr if args.dry_run else sys.stdout)
    return 0
