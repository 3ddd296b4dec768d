"""The access list's decision against the plain reading of its rules.

`licentia.core.acl.decide` indexes the rules by what they match and keeps, per client and
item, what the rules say whatever the seats held. The plain reading below is the
specification (docs/admin.md, "Which rule decides" and "Seats: reserved, free and
charged"): it walks every rule in order for every access, with no index and nothing kept.
Hypothesis checks that both agree for random lists and random runs of accesses and
releases by random clients at random times (rules expiring in between, the clock going
back, the directory answering or not), with one list object for the whole run so that
what `decide` keeps is used and must stay right.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from licentia.core.acl import (
    PRECEDENCE,
    AccessList,
    Action,
    Decision,
    Held,
    Identity,
    Level,
    Match,
    Refusal,
    Rule,
    Scope,
    decide,
)
from licentia.core.seats import ItemKey
from licentia.model import ErrorCode

KEYS = (ItemKey("130-1001", 10001, 7), ItemKey("130-1001", 10001, 8), ItemKey("130-2002", 10002, 7))


# -- the plain reading ------------------------------------------------------------------------


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as a rule sees it: no zone, an IPv4-mapped IPv6 address as IPv4."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0]) if text else None
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def covers(scope: Scope, key: ItemKey) -> bool:
    return (scope.level is Level.SERVER
            or (scope.level is Level.CONTAINER and scope.container == key.container)
            or (scope.level is Level.FIRM and scope.firm == key.firm_code)
            or (scope.level is Level.PRODUCT and (scope.firm, scope.product) == (key.firm_code, key.product_code)))


def matches(rule: Rule, who: Identity) -> bool | None:
    """Whether `rule` matches `who` (None: a group rule, and the groups are unknown)."""
    values = [v.strip().casefold() for v in rule.values]
    if rule.match is Match.ANYONE:
        return True
    if rule.match is Match.USER:
        return bool(who.user.strip()) and who.user.strip().casefold() in values
    if rule.match is Match.GROUP:
        if who.groups is None:
            return None
        return any(g.strip().casefold() in values for g in who.groups)
    addr = _address(who.address)
    if rule.match is Match.SUBNET:
        return addr is not None and any(
            addr.version == net.version and addr in net
            for net in (ipaddress.ip_network(v, strict=False) for v in rule.values))
    host = who.host.strip().casefold()
    first = host.split(".", 1)[0]
    for v in values:
        as_address = _address(v)
        if as_address is not None:
            if addr is not None and addr == as_address:
                return True
        elif host and v in (host, first):
            return True
    return False


def plain_decide(acl: AccessList, key: ItemKey, who: Identity, quantity: int | None, held: Held,
                 now: float) -> tuple[bool, str | None, tuple[str, ...], str | None, ErrorCode | None,
                                      Refusal | None]:
    """(granted, charge, counted, rule, code, refusal) as docs/admin.md reads the rules."""
    denied = ErrorCode.ACCESS_LIST_DENIED
    if quantity is not None and held.total >= quantity:
        return (False, None, (), None, ErrorCode.NO_MORE_LICENSES, Refusal.NO_SEATS)
    live = [r for r in acl.rules if covers(r.scope, key) and (r.expires is None or now < r.expires)]
    scopes = sorted({r.scope for r in acl.rules if covers(r.scope, key)}
                    | {s for s in acl.defaults if covers(s, key)},
                    key=lambda s: PRECEDENCE.index(s.level))
    if not acl.enabled or not scopes:
        return (True, None, (), None, None, None)
    # which rule decides: the most specific scope with a matching rule; a deny wins there
    deciding: Rule | None = None
    deciding_scope: list[Rule] = []
    for scope in scopes:
        here = [r for r in live if r.scope == scope]
        hits = [r for r in here if matches(r, who)]
        denies = [r for r in hits if r.action is Action.DENY]
        if denies:
            return (False, None, (), denies[0].name, denied, Refusal.DENIED)
        unknown = [r for r in here if r.action is Action.DENY and matches(r, who) is None]
        if unknown:
            return (False, None, (), unknown[0].name, denied, Refusal.DIRECTORY)
        if hits:
            deciding, deciding_scope = hits[0], hits
            break
    if deciding is None:
        default = next((acl.defaults[s] for s in scopes if s in acl.defaults), Action.ALLOW)
        if default is Action.DENY:
            return (False, None, (), "default", denied, Refusal.DENIED)
    # every matching allow rule of every covering scope, most specific scope first
    allowing = [r for scope in scopes for r in live
                if r.scope == scope and r.action is Action.ALLOW and matches(r, who)]
    for r in allowing:
        if r.limit is not None and held.by_limit.get(r.name, 0) >= r.limit:
            return (False, None, (), r.name, denied, Refusal.LIMIT)
    counted = tuple(r.name for r in allowing if r.limit is not None)
    name = deciding.name if deciding is not None else None
    charging = [r for r in allowing if r.reserve > 0 or r.limit is not None]
    if quantity is None:
        first = next((r.name for r in deciding_scope if r.reserve > 0 or r.limit is not None), None)
        return (True, first, counted, name, None, None)
    # reservations in precedence and list order until the seats run out; the rest is free
    room, reserve = quantity, {}
    for scope in scopes:
        for r in live:
            if r.scope == scope and r.reserve > 0:
                reserve[r.name] = min(r.reserve, room)
                room -= reserve[r.name]
    for r in charging:
        if held.by_charge.get(r.name, 0) < reserve.get(r.name, 0):
            return (True, r.name, counted, name, None, None)
    free_used = sum(n if pool is None else max(0, n - reserve.get(pool, 0)) for pool, n in held.by_charge.items())
    if free_used < room:
        return (True, charging[0].name if charging else None, counted, name, None, None)
    owners = [n for n, k in reserve.items() if k > held.by_charge.get(n, 0)]
    return (False, None, (), owners[0] if owners else None, denied, Refusal.RESERVED)


def outcome(d: Decision) -> tuple[bool, str | None, tuple[str, ...], str | None, ErrorCode | None,
                                  Refusal | None]:
    if not d.granted:
        return (False, None, (), d.rule, d.code, d.refusal)
    return (True, d.charge, d.counted, d.rule, None, None)


# -- random lists and runs --------------------------------------------------------------------

VALUES = {
    Match.USER: ["alice", "BOB", " carol", "dave"],
    Match.HOST: ["pc1", "pc1.corp.example", "PC2.corp.example", "lab", "10.0.0.5", "2001:db8::7"],
    Match.SUBNET: ["10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "10.0.0.5/32", "2001:db8::/32", "10.1.2.3/20"],
    Match.GROUP: ["support", "Dev", "qa"],
}
SCOPES = ["server", "container 130-1001", "container 130-2002", "firm 10001", "firm 10002",
          "product 10001:7", "product 10001:8", "product 10002:7"]
TIMES = [100.0, 200.0, 300.0]


@dataclass
class Draft:
    scope: str
    action: Action
    match: Match
    picks: tuple[int, ...]  # indexes into VALUES[match]
    reserve: int
    limit: int | None
    expires: float | None


drafts = st.builds(
    Draft,
    st.sampled_from(SCOPES),
    st.sampled_from([Action.ALLOW, Action.ALLOW, Action.DENY]),
    st.sampled_from(list(Match)),
    st.lists(st.integers(0, 5), min_size=1, max_size=2).map(tuple),
    st.integers(0, 3),
    st.none() | st.integers(0, 3),
    st.none() | st.sampled_from(TIMES),
)


def build(ds: list[Draft], defaults: dict[str, Action], enabled: bool) -> AccessList:
    rules = []
    for i, d in enumerate(ds):
        values = () if d.match is Match.ANYONE else tuple(
            dict.fromkeys(VALUES[d.match][j % len(VALUES[d.match])] for j in d.picks))
        allow = d.action is Action.ALLOW
        limit = d.reserve + d.limit if allow and d.limit is not None else None
        rules.append(Rule(f"r{i}", Scope.parse(d.scope), d.action, d.match, values, d.reserve if allow else 0,
                          limit, d.expires))
    return AccessList(tuple(rules), {Scope.parse(s): a for s, a in defaults.items()}, enabled)


identities = st.builds(
    Identity,
    st.sampled_from(["alice", "Alice", "bob", "carol", "eve", ""]),
    st.sampled_from(["pc1", "pc1.corp.example", "pc2.corp.example", "LAB.other.example", "pc3", ""]),
    st.sampled_from(["10.0.0.5", "10.1.2.3", "192.168.1.9", "::ffff:10.0.0.5", "fe80::1%eth0", "2001:db8::7",
                     "172.16.0.1", ""]),
    st.none() | st.frozensets(st.sampled_from(["support", "DEV", "qa", "staff"]), max_size=2),
)
# (release the oldest seat?, client, item, time)
steps = st.lists(st.tuples(st.integers(0, 3), identities, st.sampled_from(KEYS),
                           st.sampled_from([0.0, 99.0, 150.0, 200.0, 250.0, 400.0])), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(drafts, max_size=12),
       st.dictionaries(st.sampled_from(SCOPES), st.sampled_from(list(Action)), max_size=3),
       st.booleans() | st.just(True),
       st.sampled_from([None, 1, 3, 6]),
       steps)
def test_decide_equals_the_plain_reading_of_the_rules(
        ds: list[Draft], defaults: dict[str, Action], enabled: bool, quantity: int | None,
        ops: list[tuple[int, Identity, ItemKey, float]]) -> None:
    acl = build(ds, defaults, enabled)
    held = {k: Held() for k in KEYS}
    seats: list[tuple[ItemKey, Decision]] = []
    for release, who, key, now in ops:
        if release == 0 and seats:
            k, d = seats.pop(0)
            held[k].give_back(d.charge, d.counted)
            continue
        expected = plain_decide(acl, key, who, quantity, held[key], now)
        d = decide(acl, key, who, quantity, held[key], now)
        assert outcome(d) == expected, (who, key, now)
        # asked again with nothing changed, the answer is the same (and now comes from what was kept)
        assert outcome(decide(acl, key, who, quantity, held[key], now)) == expected
        if d.granted:
            held[key].take(d.charge, d.counted)
            seats.append((key, d))
        else:
            assert d.message
