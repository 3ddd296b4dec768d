"""FlexNet Publisher options files, read into licentia access-list rules.

For administrators who come from FlexNet: `licentia acl import-flexnet vendor.opt` reads
GROUP, HOST_GROUP, INCLUDE, INCLUDEALL, EXCLUDE, EXCLUDEALL, RESERVE and MAX lines and
writes the same policy as rules. What has no twin in licentia is listed, line by line,
never dropped silently. docs/admin.md has the table; in short:

- `GROUP name u1 u2 …` / `HOST_GROUP name h1 h2 …` become the value lists of the rules that
  name them (FlexNet's groups are local lists, not directory groups); repeated lines add up.
- `INCLUDE feature TYPE who` → an allow rule at the feature's product scope, and that
  scope's default becomes deny (FlexNet: once a feature has an INCLUDE list, only those on
  it may use it). `INCLUDEALL` does the same at server scope.
- `EXCLUDE feature TYPE who` → a deny rule at the product scope; `EXCLUDEALL` at server
  scope, copied into every product scope that has rules, so that, as in FlexNet, an
  exclusion wins over a feature's INCLUDE or RESERVE (licentia's more specific scope would
  otherwise decide).
- `RESERVE n feature TYPE who` → an allow rule reserving n seats (repeated lines for the
  same people add up); `MAX n feature TYPE who` → the same rule's maximum.
- TYPE USER, HOST, GROUP (users), HOST_GROUP (hosts) and INTERNET (an address, or a
  pattern with `*` for whole octets) translate; DISPLAY and PROJECT do not.
- A feature is a FlexNet name; `features` maps it to `(firm, product)`, or the options
  file may name `FIRM:PRODUCT` directly. `feature:KEY=VALUE` qualifiers (version, vendor
  string) have no twin: the rule applies to the whole product, and this is noted.

Pure: text in, rules and notes out.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from licentia.core.acl import SERVER, AccessList, Action, Level, Match, Rule, Scope
from licentia.model import ErrorCode, LicentiaError

TRANSLATED = ("GROUP", "HOST_GROUP", "INCLUDE", "INCLUDEALL", "EXCLUDE", "EXCLUDEALL", "RESERVE", "MAX")

# keywords with no twin in the access list, and where licentia does that instead
_ELSEWHERE = {
    "TIMEOUT": "the runtime frees silent network clients after [network] client_timeout (runtime.toml)",
    "TIMEOUTALL": "the runtime frees silent network clients after [network] client_timeout (runtime.toml)",
    "LINGER": "licentia has no linger: a seat is free the moment it is released",
    "BORROW_LOWWATER": "borrowing limits are not part of the access list",
    "INCLUDE_BORROW": "borrowing limits are not part of the access list",
    "EXCLUDE_BORROW": "borrowing limits are not part of the access list",
    "MAX_BORROW_HOURS": "borrowing limits are not part of the access list",
    "REPORTLOG": "licentia always keeps the signed usage log (logs/usage.jsonl); see `licentia report`",
    "DEBUGLOG": "the runtime logs to its standard error and the usage log",
    "NOLOG": "the usage log records every grant, denial and release",
    "GROUPCASEINSENSITIVE": "licentia always compares user, host and group names without case",
    "FQDN_MATCHING": "a host rule matches the full name and its first label",
}


@dataclass
class Imported:
    """Rules read from an options file, with what did not translate (line: why)."""

    rules: list[Rule] = field(default_factory=list)
    defaults: dict[Scope, Action] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def merged_into(self, acl: AccessList) -> AccessList:
        taken = {r.name for r in acl.rules}
        clash = [r.name for r in self.rules if r.name in taken]
        if clash:
            raise LicentiaError(ErrorCode.ALREADY_EXISTS,
                                f"the list already has rules named {', '.join(clash[:5])}",
                                "remove them first, or import with --replace")
        defaults = dict(acl.defaults)
        defaults.update(self.defaults)
        return AccessList((*acl.rules, *self.rules), defaults, acl.enabled)


@dataclass
class _Who:
    match: Match
    values: tuple[str, ...]
    label: str  # as the options file names it, for messages and rule names


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not pending:
            start = number
            if line.lstrip().startswith("#") or not line.strip():
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending.strip():
        out.append((start, pending))
    return out


def _internet(pattern: str) -> tuple[Match, str] | None:
    """An INTERNET value: an address, or an IPv4 pattern with `*` for trailing octets."""
    try:
        return Match.HOST, str(ipaddress.ip_address(pattern))
    except ValueError:
        pass
    parts = pattern.split(".")
    if len(parts) == 4 and "*" in parts:
        stars = [i for i, p in enumerate(parts) if p == "*"]
        if stars and stars == list(range(stars[0], 4)):
            fixed = parts[: stars[0]]
            if all(p.isdigit() and 0 <= int(p) <= 255 for p in fixed):
                base = ".".join([*fixed, *["0"] * (4 - len(fixed))])
                return Match.SUBNET, f"{base}/{8 * len(fixed)}"
    return None


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@-]+", "_", text)[:100]


def parse_options(text: str, features: Mapping[str, tuple[int, int]] | None = None,
                  source: str = "the options file") -> Imported:
    """Read a FlexNet options file. `features` maps FlexNet feature names to licentia's
    (firm code, product code)."""
    features = dict(features or {})
    result = Imported()
    lines = _logical_lines(text)
    users: dict[str, list[str]] = {}
    hosts: dict[str, list[str]] = {}
    for _number, line in lines:  # groups first: FlexNet lets a rule name a group defined later
        words = _split(line)
        if len(words) >= 2 and words[0].upper() in ("GROUP", "HOST_GROUP"):
            (users if words[0].upper() == "GROUP" else hosts).setdefault(words[1], []).extend(words[2:])

    by_key: dict[tuple[Scope, Match, tuple[str, ...]], int] = {}  # (scope, who) -> index of allow rule
    server_denies: list[Rule] = []

    def note(number: int, why: str) -> None:
        result.notes.append(f"{source}:{number}: {why}")

    for number, line in lines:
        words = _split(line)
        if not words:
            continue
        keyword = words[0].upper()
        if keyword in ("GROUP", "HOST_GROUP"):
            if len(words) < 3:
                note(number, f"{keyword} {' '.join(words[1:])} names no members; ignored")
            continue
        if keyword not in TRANSLATED:
            why = _ELSEWHERE.get(keyword, "not a keyword licentia knows")
            note(number, f"{keyword} is not translated: {why}")
            continue
        counted = keyword in ("RESERVE", "MAX")
        all_features = keyword in ("INCLUDEALL", "EXCLUDEALL")
        need = 2 + (0 if all_features else 1) + (1 if counted else 0)
        if len(words) < need + 1 or (len(words) > need + 1):
            note(number, f"{keyword} expects {'a count, ' if counted else ''}"
                         f"{'' if all_features else 'a feature, '}a type and a name; not translated")
            continue
        args = words[1:]
        count = 0
        if counted:
            try:
                count = int(args[0])
                if count < 0:
                    raise ValueError
            except ValueError:
                note(number, f"{keyword} count {args[0]!r} is not a number; not translated")
                continue
            args = args[1:]
        if all_features:
            scope = SERVER
        else:
            if re.fullmatch(r"\d+:\d+", args[0]):
                feature, qualifier = args[0], ""
            else:
                feature, _, qualifier = args[0].partition(":")
            target = features.get(feature)
            if target is None and re.fullmatch(r"\d+:\d+", feature):
                f, p = feature.split(":")
                target = (int(f), int(p))
            if target is None:
                note(number, f"feature {feature!r} is not mapped to a licentia product "
                             f"(give --feature {feature}=FIRM:PRODUCT); not translated")
                continue
            if qualifier:
                note(number, f"the qualifier {qualifier!r} of feature {feature} has no twin; "
                             f"the rule applies to all of product {target[0]}:{target[1]}")
            scope = Scope(Level.PRODUCT, firm=target[0], product=target[1])
            args = args[1:]
        who = _who(args[0], args[1], users, hosts)
        if isinstance(who, str):
            note(number, who)
            continue
        if keyword in ("EXCLUDE", "EXCLUDEALL"):
            rule = Rule(f"opt{number}-{keyword.lower()}-{_name(who.label)}", scope, Action.DENY, who.match,
                        who.values, note=f"{source}:{number}: {line.strip()}"[:500])
            result.rules.append(rule)
            if scope == SERVER:
                server_denies.append(rule)
            continue
        key = (scope, who.match, who.values)
        index = by_key.get(key)
        if index is None:
            result.rules.append(Rule(f"opt{number}-{keyword.lower()}-{_name(who.label)}", scope, Action.ALLOW,
                                     who.match, who.values, note=f"{source}:{number}: {line.strip()}"[:500]))
            index = by_key[key] = len(result.rules) - 1
        old = result.rules[index]
        reserve, limit = old.reserve, old.limit
        if keyword == "RESERVE":
            reserve += count
        elif keyword == "MAX":
            limit = count if limit is None else min(limit, count)
        if limit is not None and reserve > limit:
            note(number, f"{who.label} would reserve {reserve} seats but may hold at most {limit}; "
                         f"the reservation is cut to {limit}")
            reserve = limit
        result.rules[index] = Rule(old.name, old.scope, old.action, old.match, old.values, reserve, limit,
                                   old.expires, old.note)
        if keyword in ("INCLUDE", "INCLUDEALL"):
            result.defaults[scope] = Action.DENY

    # EXCLUDEALL wins over a feature's own rules in FlexNet: copy it into their scopes
    product_scopes = list(dict.fromkeys(r.scope for r in result.rules if r.scope.level is Level.PRODUCT))
    for scope in product_scopes:
        for deny in server_denies:
            result.rules.append(Rule(f"{deny.name}@{scope.firm}:{scope.product}", scope, Action.DENY, deny.match,
                                     deny.values, note=deny.note))
    return result


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError:
        return line.split()


def _who(kind: str, name: str, users: Mapping[str, list[str]], hosts: Mapping[str, list[str]]) -> _Who | str:
    kind = kind.upper()
    if kind == "USER":
        return _Who(Match.USER, (name,), name)
    if kind == "HOST":
        return _Who(Match.HOST, (name,), name)
    if kind == "GROUP":
        members = users.get(name)
        if not members:
            return f"GROUP {name} is not defined in this file (or has no members); not translated"
        return _Who(Match.USER, tuple(dict.fromkeys(members)), name)
    if kind == "HOST_GROUP":
        members = hosts.get(name)
        if not members:
            return f"HOST_GROUP {name} is not defined in this file (or has no members); not translated"
        return _Who(Match.HOST, tuple(dict.fromkeys(members)), name)
    if kind == "INTERNET":
        got = _internet(name)
        if got is None:
            return f"INTERNET {name} is neither an address nor an a.b.c.* pattern; not translated"
        return _Who(got[0], (got[1],), name)
    if kind in ("DISPLAY", "PROJECT"):
        return f"type {kind} has no twin (licentia matches user, host, address and group); not translated"
    return f"type {kind} is unknown; not translated"
