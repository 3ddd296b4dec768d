"""Access lists and reservations on a network server: who may take a seat of which item.

Pure: no sockets, no files, no clock (`now` is a parameter). The runtime loads the list
from `acl.toml` in its home (`licentia.runtime.acl`), asks `decide` before the seat table
takes a seat, and keeps a `Held` per item so the next decision knows which rule each held
seat was charged to. docs/admin.md states the rules; in short:

Rules. A rule matches by user, host (a name or an address), subnet, directory group, or
anyone, and either allows or denies. An allowing rule may *reserve* seats (held back for
the people it matches) and set a *maximum* (at most that many seats held by the people it
matches). Values are lists: `user = ["alice", "bob"]` is one rule with one pool.

Scopes and precedence. Every rule belongs to one scope: a product item (`product F:P`),
a firm (`firm F`), a container (`container SERIAL`) or the whole server (`server`). For an
access, the scopes that cover the item are consulted from the most specific to the least:
product item, firm, container, server. The first scope with a rule that matches the client
decides; within that scope a matching deny wins over a matching allow. When no rule of any
covering scope matches, the default action decides: that of the most specific covering
scope that sets one, else the server's (`allow` unless set).

Seats. `quantity` seats exist. Reservations set aside `reserve` seats for each reserving
rule; the rest are free for anyone allowed. A seat is *charged* to a rule the client
matches (a reserving rule with a reserved seat left first, then any matching rule with a
reserve or a maximum, using a free seat), or to no rule (the free pool). Seats charged to a
rule beyond its reserve come from the free pool. A seat also counts against the maximum
of every matching rule that has one. So with 10 seats, 3 reserved for group support, 4 for
development: a fourth support user takes a free seat; when the 3 free seats are gone, only
the reserved ones remain, each for its own group.

Cost: the rules are indexed by scope and by what they match when the list is built, so
reading them for a client is O(groups of the client + distinct subnet prefix lengths +
matching rules) per covering scope, independent of the number of rules. That reading
(`_settle`: which rule decides, the maxima that count, the reservations) does not depend on
the seats held, so `decide` keeps it per item and client (its identity, groups included)
until the list is replaced or a rule of the covering scopes starts or stops applying; an
access then costs a look-up and a comparison of the seats held with the maxima and
reservations. tests/core/test_acl_reading.py checks `decide` against a plain reading of
the rules.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from licentia.core.seats import ItemKey
from licentia.model import ErrorCode, LicentiaError

FORMAT = "licentia-acl"
VERSION = 1
MAX_RULES = 100_000


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Match(StrEnum):
    """What a rule matches on."""

    USER = "user"
    HOST = "host"
    SUBNET = "subnet"
    GROUP = "group"
    ANYONE = "anyone"


class Level(StrEnum):
    """Scopes, from the most specific (consulted first) to the least."""

    PRODUCT = "product"
    FIRM = "firm"
    CONTAINER = "container"
    SERVER = "server"


PRECEDENCE: tuple[Level, ...] = (Level.PRODUCT, Level.FIRM, Level.CONTAINER, Level.SERVER)


class Refusal(StrEnum):
    """Why an access was refused."""

    DENIED = "denied"  # a deny rule (or the default action) says no
    LIMIT = "limit"  # a rule's maximum is reached
    RESERVED = "reserved"  # the seats left are reserved for others
    NO_SEATS = "no-seats"  # every seat is taken (212, as without a list)
    DIRECTORY = "directory"  # a group rule decides and the directory could not be asked


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a rule applies: `server`, `container SERIAL`, `firm F` or `product F:P`."""

    level: Level
    container: str = ""
    firm: int = 0
    product: int = 0

    @classmethod
    def parse(cls, text: str) -> Scope:
        words = text.strip().split()
        bad = LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"scope {text!r} is not one of: server, container SERIAL, firm FIRM, product FIRM:PRODUCT",
        )
        if not words:
            raise bad
        head = words[0].lower()
        if head == "server" and len(words) == 1:
            return cls(Level.SERVER)
        if len(words) != 2:
            raise bad
        arg = words[1]
        try:
            if head == "container":
                return cls(Level.CONTAINER, container=arg)
            if head == "firm":
                return cls(Level.FIRM, firm=_nonneg(arg))
            if head == "product":
                firm, _, product = arg.partition(":")
                return cls(Level.PRODUCT, firm=_nonneg(firm), product=_nonneg(product))
        except ValueError:
            raise bad from None
        raise bad

    def __str__(self) -> str:
        if self.level is Level.SERVER:
            return "server"
        if self.level is Level.CONTAINER:
            return f"container {self.container}"
        if self.level is Level.FIRM:
            return f"firm {self.firm}"
        return f"product {self.firm}:{self.product}"

    def covers(self, key: ItemKey) -> bool:
        if self.level is Level.SERVER:
            return True
        if self.level is Level.CONTAINER:
            return self.container == key.container
        if self.level is Level.FIRM:
            return self.firm == key.firm_code
        return self.firm == key.firm_code and self.product == key.product_code


SERVER = Scope(Level.SERVER)


def _nonneg(text: str) -> int:
    value = int(text, 10)
    if value < 0:
        raise ValueError(text)
    return value


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. `values` are what `match` compares with (empty for `anyone`); `reserve`
    and `limit` only for allowing rules; `expires` (Unix time) ends the rule."""

    name: str
    scope: Scope
    action: Action
    match: Match
    values: tuple[str, ...] = ()
    reserve: int = 0
    limit: int | None = None
    expires: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        def bad(why: str) -> LicentiaError:
            return LicentiaError(ErrorCode.INVALID_PARAMETER, f"rule {self.name!r}: {why}")

        if not self.name or any(c.isspace() for c in self.name) or len(self.name) > 128:
            raise bad("a rule needs a name of up to 128 characters without spaces")
        if self.match is Match.ANYONE:
            if self.values:
                raise bad("a rule for anyone takes no values")
        elif not self.values or not all(isinstance(v, str) and v.strip() for v in self.values):
            raise bad(f"a {self.match.value} rule needs at least one {self.match.value}")
        if isinstance(self.reserve, bool) or not isinstance(self.reserve, int) or self.reserve < 0:
            raise bad(f"reserve {self.reserve!r} is not a number of seats")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 0):
            raise bad(f"max {self.limit!r} is not a number of seats")
        if self.action is Action.DENY and (self.reserve or self.limit is not None):
            raise bad("a deny rule cannot reserve seats or set a maximum")
        if self.limit is not None and self.reserve > self.limit:
            raise bad(f"it reserves {self.reserve} seats but allows at most {self.limit}")
        if self.match is Match.SUBNET:
            for v in self.values:
                try:
                    ipaddress.ip_network(v, strict=False)
                except ValueError:
                    raise bad(f"{v!r} is not a subnet (e.g. 10.1.0.0/16)") from None

    @property
    def counts(self) -> bool:
        """Seats are charged to this rule (it reserves or has a maximum)."""
        return self.reserve > 0 or self.limit is not None

    def describe(self) -> str:
        who = "anyone" if self.match is Match.ANYONE else f"{self.match.value} {', '.join(self.values)}"
        parts = [f'rule "{self.name}" ({self.action.value} {who} at {self.scope}']
        if self.reserve:
            parts.append(f", reserves {self.reserve}")
        if self.limit is not None:
            parts.append(f", max {self.limit}")
        return "".join(parts) + ")"


class Identity(NamedTuple):
    """Who asks, as the runtime established it (never as the client claims it): the user
    name, the host name, the address, and the directory groups (None: the directory could
    not be asked; group rules then match no one, and a deciding group deny refuses)."""

    user: str = ""
    host: str = ""
    address: str = ""
    groups: frozenset[str] | None = frozenset()


class _Probe(NamedTuple):
    """What the indexes are asked with: the client's identity, prepared once per decision."""

    user: str
    host: str
    short: str  # the host name's first label ("" when the name has none)
    number: int  # the address as a number (-1: none)
    version: int
    groups: tuple[str, ...] | None


_probes: dict[Identity, _Probe] = {}


def _probe(who: Identity) -> _Probe:
    p = _probes.get(who)
    if p is None:
        host = who.host.strip().casefold()
        short = host.split(".", 1)[0]
        addr = _ip(who.address)
        p = _Probe(who.user.strip().casefold(), host, short if short != host else "",
                   int(addr) if addr is not None else -1, addr.version if addr is not None else 0,
                   None if who.groups is None else tuple(g.strip().casefold() for g in who.groups))
        if len(_probes) > 4096:
            _probes.clear()
        _probes[who] = p
    return p


_NO_RULES: list[Rule] = []


class _Index:
    """The rules of one scope, indexed by what they match."""

    __slots__ = ("addresses", "anyone", "default", "expiring", "group_denies", "groups", "has_groups", "hosts",
                 "prefixes", "reserving", "rules", "scope", "users")

    def __init__(self, scope: Scope, rules: Sequence[tuple[int, Rule]], default: Action | None) -> None:
        self.scope = scope
        self.default = default
        self.rules = [r for _o, r in rules]
        self.users: dict[str, list[int]] = {}
        self.hosts: dict[str, list[int]] = {}
        self.addresses: dict[tuple[int, int], list[int]] = {}  # (version, number) -> rules
        self.groups: dict[str, list[int]] = {}
        self.anyone: list[int] = []
        # (version, bits to drop) -> network number >> bits -> rules
        self.prefixes: dict[tuple[int, int], dict[int, list[int]]] = {}
        self.has_groups = False
        self.expiring = any(r.expires is not None for r in self.rules)
        self.reserving = [r for r in self.rules if r.reserve]
        self.group_denies = [r for r in self.rules if r.match is Match.GROUP and r.action is Action.DENY]
        for i, r in enumerate(self.rules):
            if r.match is Match.ANYONE:
                self.anyone.append(i)
            for v in r.values:
                v = v.strip()
                if r.match is Match.USER:
                    self.users.setdefault(v.casefold(), []).append(i)
                elif r.match is Match.GROUP:
                    self.has_groups = True
                    self.groups.setdefault(v.casefold(), []).append(i)
                elif r.match is Match.HOST:
                    addr = _ip(v)
                    if addr is not None:
                        self.addresses.setdefault((addr.version, int(addr)), []).append(i)
                    else:
                        self.hosts.setdefault(v.casefold(), []).append(i)
                elif r.match is Match.SUBNET:
                    net = ipaddress.ip_network(v, strict=False)
                    shift = net.max_prefixlen - net.prefixlen
                    self.prefixes.setdefault((net.version, shift), {}).setdefault(
                        int(net.network_address) >> shift, []).append(i)

    def matching(self, p: _Probe, now: float) -> tuple[list[Rule], list[Rule]]:
        """(matching rules in list order, group deny rules that could not be checked)."""
        found: list[int] = []
        if self.anyone:
            found += self.anyone
        if p.user and self.users:
            hit = self.users.get(p.user)
            if hit:
                found += hit
        if p.host and self.hosts:
            hit = self.hosts.get(p.host)
            if hit:
                found += hit
            if p.short:
                hit = self.hosts.get(p.short)
                if hit:
                    found += hit
        if p.number >= 0:
            if self.addresses:
                hit = self.addresses.get((p.version, p.number))
                if hit:
                    found += hit
            for (version, shift), nets in self.prefixes.items():
                if version == p.version:
                    hit = nets.get(p.number >> shift)
                    if hit:
                        found += hit
        unknown = _NO_RULES
        if self.has_groups:
            if p.groups is None:
                unknown = [r for r in self.group_denies if _live(r, now)]
            else:
                for g in p.groups:
                    hit = self.groups.get(g)
                    if hit:
                        found += hit
        if not found:
            return _NO_RULES, unknown
        rules = self.rules
        matched = [rules[i] for i in (sorted(set(found)) if len(found) > 1 else found)]
        if self.expiring:
            matched = [r for r in matched if _live(r, now)]
        return matched, unknown


class _Covering:
    """The scopes that cover one item, most specific first, what they hold, and the
    settled answers for the clients that asked for it (`_Settled`, by quantity and
    identity)."""

    __slots__ = ("expires", "expiring", "has_groups", "reserving", "scopes", "settled")

    def __init__(self, scopes: tuple[_Index, ...]) -> None:
        self.scopes = scopes
        self.reserving = tuple(r for ix in scopes for r in ix.reserving)
        self.has_groups = any(ix.has_groups for ix in scopes)
        self.expiring = any(ix.expiring for ix in scopes)
        # the times at which a rule of these scopes stops applying, in order
        self.expires = sorted({r.expires for ix in scopes for r in ix.rules if r.expires is not None})
        self.settled: dict[tuple[int | None, Identity], _Settled] = {}


def _live(rule: Rule, now: float) -> bool:
    return rule.expires is None or now < rule.expires


class Decision(NamedTuple):
    """The answer of `decide`. Granted: `charge` is the rule the seat is charged to (None:
    the free pool) and `counted` the rules whose maximum counts it; give both to
    `Held.take` once the seat table has taken the seat. Refused: `code`, `refusal`, `rule`
    (the rule's name, or "default") and `message`."""

    granted: bool
    charge: str | None = None
    counted: tuple[str, ...] = ()
    rule: str | None = None  # the rule that decided (allow or deny), if any
    code: ErrorCode | None = None
    refusal: Refusal | None = None
    message: str = ""

    def error(self) -> LicentiaError:
        """The refusal as the error the client receives."""
        if self.granted or self.code is None:
            raise LicentiaError(ErrorCode.INTERNAL, "a granted decision has no error")
        return LicentiaError(self.code, self.message)


GRANT_FREE = Decision(True)


class Held:
    """The seats of one item held under the list: how many are charged to each rule (None:
    the free pool) and how many count against each rule's maximum. The runtime keeps one
    per item, calls `take` after a seat was granted and `give_back` when it is freed."""

    __slots__ = ("by_charge", "by_limit", "total")

    def __init__(self) -> None:
        self.by_charge: dict[str | None, int] = {}
        self.by_limit: dict[str, int] = {}
        self.total = 0

    def take(self, charge: str | None, counted: Iterable[str] = ()) -> None:
        by_charge = self.by_charge
        by_charge[charge] = by_charge.get(charge, 0) + 1
        if counted:
            for name in counted:
                self.by_limit[name] = self.by_limit.get(name, 0) + 1
        self.total += 1

    def give_back(self, charge: str | None, counted: Iterable[str] = ()) -> None:
        n = self.by_charge.get(charge, 0)
        if n <= 0 or self.total <= 0:
            raise LicentiaError(ErrorCode.INTERNAL, f"no seat charged to {charge or 'the free pool'} is held")
        if n == 1:
            del self.by_charge[charge]
        else:
            self.by_charge[charge] = n - 1
        for name in counted or ():
            m = self.by_limit.get(name, 0)
            if m <= 1:
                self.by_limit.pop(name, None)
            else:
                self.by_limit[name] = m - 1
        self.total -= 1

    @classmethod
    def of(cls, seats: Iterable[tuple[str | None, Iterable[str]]]) -> Held:
        """Rebuilt from the (charge, counted) of each held seat (after a restart)."""
        held = cls()
        for charge, counted in seats:
            held.take(charge, counted)
        return held


@dataclass(frozen=True)
class AccessList:
    """A whole list: rules in order, default actions per scope, and whether it is on."""

    rules: tuple[Rule, ...] = ()
    defaults: Mapping[Scope, Action] = field(default_factory=dict)
    enabled: bool = True
    _cache: dict[ItemKey, _Covering] = field(default_factory=dict, repr=False, compare=False)
    _allot: dict[tuple[str, int, int, int], tuple[dict[str, int], int]] = field(default_factory=dict, repr=False,
                                                                              compare=False)
    _by_scope: dict[Scope, _Index] = field(default_factory=dict, repr=False, compare=False)
    _by_name: dict[str, Rule] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.rules) > MAX_RULES:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"an access list holds at most {MAX_RULES} rules")
        grouped: dict[Scope, list[tuple[int, Rule]]] = {}
        for i, r in enumerate(self.rules):
            if r.name in self._by_name or r.name == "default":
                raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                    f"two rules are named {r.name!r}; every rule needs its own name"
                                    if r.name != "default" else '"default" names the default action, not a rule')
            self._by_name[r.name] = r
            grouped.setdefault(r.scope, []).append((i, r))
        for scope in set(grouped) | set(self.defaults):
            self._by_scope[scope] = _Index(scope, grouped.get(scope, []), self.defaults.get(scope))

    def rule(self, name: str) -> Rule:
        try:
            return self._by_name[name]
        except KeyError:
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"no rule is named {name!r}",
                                "see the rules with `licentia acl list`") from None

    def covering(self, key: ItemKey) -> _Covering:
        found = self._cache.get(key)
        if found is None:
            candidates = (Scope(Level.PRODUCT, firm=key.firm_code, product=key.product_code),
                          Scope(Level.FIRM, firm=key.firm_code),
                          Scope(Level.CONTAINER, container=key.container), SERVER)
            found = _Covering(tuple(self._by_scope[s] for s in candidates if s in self._by_scope))
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[key] = found
        return found

    def scopes_for(self, key: ItemKey) -> tuple[_Index, ...]:
        """The indexed scopes that cover `key`, most specific first."""
        return self.covering(key).scopes

    def needs_groups(self, key: ItemKey) -> bool:
        """Whether a group rule covers `key`: only then must the runtime ask the directory."""
        return self.enabled and self.covering(key).has_groups

    def reserved(self, key: ItemKey, now: float) -> list[Rule]:
        """The live reserving rules that cover `key`, most specific scope first."""
        cover = self.covering(key)
        if not cover.expiring:
            return list(cover.reserving)
        return [r for r in cover.reserving if _live(r, now)]

    def allotment(self, key: ItemKey, quantity: int, now: float) -> tuple[dict[str, int], int]:
        """The seats of `key` reserved per rule (reservations are honoured in list order
        until the seats run out) and the free seats left."""
        cover = self.covering(key)
        ak = (key.container, key.firm_code, key.product_code, quantity)
        if not cover.expiring:
            found = self._allot.get(ak)
            if found is not None:
                return found
        room = quantity
        reserve: dict[str, int] = {}
        for r in self.reserved(key, now):
            if r.name in reserve:
                continue
            n = min(r.reserve, room)
            reserve[r.name] = n
            room -= n
        if not cover.expiring:
            if len(self._allot) > 65536:
                self._allot.clear()
            self._allot[ak] = (reserve, room)
        return reserve, room

    def check(self, quantities: Mapping[ItemKey, int | None]) -> list[str]:
        """Warnings about the list against the items served (reservations beyond the
        quantity, rules for items that are not here)."""
        out: list[str] = []
        for key, quantity in quantities.items():
            if quantity is None:
                continue
            total = sum(r.reserve for r in self.covering(key).reserving)
            if total > quantity:
                out.append(f"{key}: {total} seats are reserved but the item has {quantity}; "
                           f"reservations are honoured in list order until the seats run out")
        for scope in self._by_scope:
            if scope.level is not Level.SERVER and not any(scope.covers(k) for k in quantities):
                out.append(f"no item served here falls under {scope}")
        return out


EMPTY = AccessList()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def decide(acl: AccessList, key: ItemKey, who: Identity, quantity: int | None, held: Held,
           now: float) -> Decision:
    """May `who` take a new seat of `key` (of `quantity` seats; None: unlimited), with
    `held` the item's seats held now? Call it only when the access takes a new seat (not
    for a second handle sharing a station's seat, nor for mode none).

    What the rules say about this client and item (`_settle`) is worked out once and kept
    until the list, the client's identity (its groups included) or the set of live rules
    changes; what is left per access is comparing the seats held with the maxima and
    reservations."""
    if quantity is not None and held.total >= quantity:
        return _refused(ErrorCode.NO_MORE_LICENSES, Refusal.NO_SEATS, None,
                        f"all {quantity} seat{_s(quantity)} of {_item(key)} are in use")
    if not acl.enabled:
        return GRANT_FREE
    cover = acl.covering(key)
    if not cover.scopes:
        return GRANT_FREE
    memo = cover.settled
    sk = (quantity, who)
    st = memo.get(sk)
    if st is None or not st.since <= now < st.until:
        st = _settle(acl, cover, key, who, quantity, now)
        if len(memo) >= _MAX_SETTLED:
            memo.clear()
        memo[sk] = st
    if st.refusal is not None:
        return st.refusal
    if st.limited:
        by_limit = held.by_limit
        for name, limit, at_limit in st.limited:
            if by_limit.get(name, 0) >= limit:
                return at_limit
    reserve = st.reserve
    if reserve is None:
        return st.grant
    by_charge = held.by_charge
    for name, reserved, grant in st.reserved:
        if by_charge.get(name, 0) < reserved:
            return grant
    free_used = 0
    for pool, count in by_charge.items():
        if pool is None:
            free_used += count
        else:
            over = count - reserve.get(pool, 0)
            if over > 0:
                free_used += over
    if free_used < st.room:
        return st.grant
    assert quantity is not None
    left = quantity - held.total
    owners = [acl.rule(n) for n, k in reserve.items() if k > by_charge.get(n, 0)]
    named = "; ".join(f"{reserve[r.name] - by_charge.get(r.name, 0)} for {r.describe()}" for r in owners)
    return _refused(ErrorCode.ACCESS_LIST_DENIED, Refusal.RESERVED, owners[0].name if owners else None,
                    f"the {left} seat{_s(left)} of {_item(key)} still free {'are' if left != 1 else 'is'} reserved: "
                    f"{named}; {_who(who)} matches none of these rules")


_MAX_SETTLED = 4096  # settled answers kept per item (then all forgotten and worked out again)


class _Settled(NamedTuple):
    """What the rules say about one client and one item whatever the seats held, valid
    while `since <= now < until` (no rule starts or stops applying in between)."""

    since: float
    until: float
    refusal: Decision | None  # the list refuses the client (a deny, the default, the directory)
    limited: tuple[tuple[str, int, Decision], ...]  # (rule, its maximum, the refusal at it)
    reserve: dict[str, int] | None  # seats reserved per rule (None: no live reservation, or unlimited)
    room: int  # the free seats
    reserved: tuple[tuple[str, int, Decision], ...]  # (matching rule, seats it reserves, a grant charged to it)
    grant: Decision  # a grant from the free seats (or of an unlimited item)


def _settle(acl: AccessList, cover: _Covering, key: ItemKey, who: Identity, quantity: int | None,
            now: float) -> _Settled:
    """The reading of the rules for `who` and `key` at `now` that does not depend on the
    seats held (see `decide`)."""
    since, until = -math.inf, math.inf
    if cover.expires:
        i = bisect.bisect_right(cover.expires, now)
        if i:
            since = cover.expires[i - 1]
        if i < len(cover.expires):
            until = cover.expires[i]
    scopes = cover.scopes
    probe = _probe(who)

    def refused(why: Refusal, rule: str | None, message: str) -> _Settled:
        return _Settled(since, until, _refused(ErrorCode.ACCESS_LIST_DENIED, why, rule, message), (), None, 0, (),
                        GRANT_FREE)

    # 1. allowed? the most specific scope with a matching rule decides; deny wins there
    deciding: Rule | None = None
    allowed_by: list[Rule] = []
    all_matching: list[Rule] = []
    for ix in scopes:
        rules, unknown = ix.matching(probe, now)
        all_matching.extend(r for r in rules if r.action is Action.ALLOW)
        if deciding is not None:
            continue
        denies = [r for r in rules if r.action is Action.DENY]
        if denies:
            r = denies[0]
            return refused(Refusal.DENIED, r.name, f"{r.describe()} refuses {_who(who)} access to {_item(key)}")
        if unknown:
            r = unknown[0]
            return refused(Refusal.DIRECTORY, r.name,
                           f"{r.describe()} may refuse {_who(who)} access to {_item(key)} and the directory "
                           f"could not be asked for the user's groups; try again when it answers")
        if rules:
            deciding = rules[0]
            allowed_by = rules
    if deciding is None:
        default = next((ix.default for ix in scopes if ix.default is not None), Action.ALLOW)
        if default is Action.DENY:
            where = next(ix.scope for ix in scopes if ix.default is not None)
            return refused(Refusal.DENIED, "default",
                           f"no rule at {', '.join(str(ix.scope) for ix in scopes)} allows {_who(who)}, and "
                           f"the default action at {where} is deny (access to {_item(key)})")
    decided_by = deciding.name if deciding is not None else None

    # 2. maxima of every matching allowing rule, at every covering scope
    matching = list(dict.fromkeys(all_matching))
    limited = [r for r in matching if r.limit is not None]
    counted = tuple(r.name for r in limited)
    at_limit = tuple(
        (r.name, r.limit, _refused(ErrorCode.ACCESS_LIST_DENIED, Refusal.LIMIT, r.name,
                                   f"{r.describe()}: all {r.limit} seat{_s(r.limit)} it allows are held; "
                                   f"{_who(who)} cannot take another seat of {_item(key)}"))
        for r in limited if r.limit is not None)

    # 3. seats: a reserved seat of a matching rule, else a free seat
    if quantity is None:
        charge = next((r.name for r in allowed_by if r.counts), None)
        return _Settled(since, until, None, at_limit, None, 0, (), Decision(True, charge, counted, decided_by))
    counts = [r for r in matching if r.counts]
    grant = Decision(True, counts[0].name if counts else None, counted, decided_by)
    if not acl.reserved(key, now):
        return _Settled(since, until, None, at_limit, None, quantity, (), grant)
    reserve, room = acl.allotment(key, quantity, now)
    reserved = tuple((r.name, reserve[r.name], Decision(True, r.name, counted, decided_by))
                     for r in counts if reserve.get(r.name, 0) > 0)
    return _Settled(since, until, None, at_limit, reserve, room, reserved, grant)


def _refused(code: ErrorCode, why: Refusal, rule: str | None, message: str) -> Decision:
    return Decision(False, None, (), rule, code, why, message)


def _item(key: ItemKey) -> str:
    text = f"product {key.firm_code}:{key.product_code}"
    return f"{text} in container {key.container}" if key.container else text


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _who(who: Identity) -> str:
    text = f"user {who.user}" if who.user else "a client"
    if who.host:
        text += f" on {who.host}"
    if who.address and who.address != who.host:
        text += f" ({who.address})"
    return text


# --------------------------------------------------------------------------- documents
#
# The list as a document (what `acl.toml` holds once parsed, and what is written back):
#
#   format = "licentia-acl"; version = 1; enabled = true
#   [defaults]  "server" = "allow", "product 10001:7" = "deny", ...
#   [[rule]]    name, scope, action, one of user/host/subnet/group (a string or a list)
#               or anyone = true; reserve, max, expires (Unix time), note


_MATCH_KEYS = ("user", "host", "subnet", "group", "anyone")
_RULE_KEYS = {"name", "scope", "action", "reserve", "max", "expires", "note", *_MATCH_KEYS}


def from_document(doc: Mapping[str, Any], where: str = "the access list") -> AccessList:
    """Build a list from its document; every mistake is named with its rule."""

    def bad(why: str) -> LicentiaError:
        return LicentiaError(ErrorCode.WRONG_CONTENT, f"{where}: {why}",
                             "fix the file (docs/admin.md shows its form) or edit it with `licentia acl`")

    if doc.get("format", FORMAT) != FORMAT:
        raise bad(f"format {doc.get('format')!r} is not {FORMAT!r}")
    if doc.get("version", VERSION) != VERSION:
        raise bad(f"version {doc.get('version')!r} is not supported (this licentia reads version {VERSION})")
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        raise bad("enabled must be true or false")
    defaults: dict[Scope, Action] = {}
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, Mapping):
        raise bad("[defaults] must map scopes to allow or deny")
    for scope_text, action in raw_defaults.items():
        try:
            defaults[Scope.parse(str(scope_text))] = Action(action)
        except (ValueError, LicentiaError) as exc:
            raise bad(f"default {scope_text!r} = {action!r}: "
                      f"{exc.message if isinstance(exc, LicentiaError) else 'use allow or deny'}") from None
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise bad("rules are [[rule]] tables")
    rules: list[Rule] = []
    for n, raw in enumerate(raw_rules, 1):
        if not isinstance(raw, Mapping):
            raise bad(f"rule {n} is not a table")
        label = f"rule {n} ({raw.get('name', 'unnamed')})"
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise bad(f"{label}: unknown key{_s(len(unknown))} {', '.join(sorted(unknown))}")
        try:
            rules.append(rule_from_fields(raw))
        except LicentiaError as exc:
            raise bad(f"{label}: {exc.message}") from None
    try:
        return AccessList(tuple(rules), defaults, enabled)
    except LicentiaError as exc:
        raise bad(exc.message) from None


def rule_from_fields(raw: Mapping[str, Any]) -> Rule:
    """One rule from its fields (a [[rule]] table, or the options of `licentia acl add`)."""

    def bad(why: str) -> LicentiaError:
        return LicentiaError(ErrorCode.INVALID_PARAMETER, why)

    present = [k for k in _MATCH_KEYS if raw.get(k) not in (None, False, [], "")]
    if len(present) != 1:
        raise bad("a rule matches exactly one of user, host, subnet, group or anyone")
    match = Match(present[0])
    values: tuple[str, ...] = ()
    if match is not Match.ANYONE:
        v = raw[present[0]]
        if isinstance(v, str):
            values = (v,)
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            values = tuple(v)
        else:
            raise bad(f"{present[0]} must be a name or a list of names")
    elif raw["anyone"] is not True:
        raise bad("anyone must be true")
    try:
        action = Action(raw.get("action", "allow"))
    except ValueError:
        raise bad(f"action {raw.get('action')!r} is neither allow nor deny") from None
    reserve = raw.get("reserve", 0)
    limit = raw.get("max")
    expires = raw.get("expires")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        raise bad("expires must be a Unix time")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise bad("note must be text")
    return Rule(str(raw.get("name", "")), Scope.parse(str(raw.get("scope", "server"))), action, match, values,
                reserve, limit, float(expires) if expires is not None else None, note)


def rule_fields(rule: Rule) -> dict[str, Any]:
    """The fields of `rule` as `rule_from_fields` reads them."""
    out: dict[str, Any] = {"name": rule.name, "scope": str(rule.scope), "action": rule.action.value}
    if rule.match is Match.ANYONE:
        out["anyone"] = True
    else:
        out[rule.match.value] = rule.values[0] if len(rule.values) == 1 else list(rule.values)
    if rule.reserve:
        out["reserve"] = rule.reserve
    if rule.limit is not None:
        out["max"] = rule.limit
    if rule.expires is not None:
        out["expires"] = int(rule.expires) if rule.expires == int(rule.expires) else rule.expires
    if rule.note:
        out["note"] = rule.note
    return out


def to_document(acl: AccessList) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "enabled": acl.enabled}
    if acl.defaults:
        doc["defaults"] = {str(s): a.value for s, a in acl.defaults.items()}
    doc["rule"] = [rule_fields(r) for r in acl.rules]
    return doc


def to_toml(acl: AccessList) -> str:
    """The list as TOML (the form `acl.toml` keeps)."""
    doc = to_document(acl)
    lines = [
        "# licentia access list: edit with `licentia acl`, or by hand (docs/admin.md);",
        "# the runtime reloads it when it changes.",
        f"format = {_toml(doc['format'])}",
        f"version = {doc['version']}",
        f"enabled = {_toml(doc['enabled'])}",
    ]
    if "defaults" in doc:
        lines += ["", "[defaults]"]
        lines += [f"{_toml(k)} = {_toml(v)}" for k, v in doc["defaults"].items()]
    for fields in doc["rule"]:
        lines += ["", "[[rule]]"]
        lines += [f"{k} = {_toml(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def with_rule(acl: AccessList, rule: Rule, position: int | None = None) -> AccessList:
    rules = list(acl.rules)
    if position is None or position > len(rules):
        rules.append(rule)
    else:
        rules.insert(max(position - 1, 0), rule)
    return AccessList(tuple(rules), dict(acl.defaults), acl.enabled)


def without_rule(acl: AccessList, name: str) -> AccessList:
    acl.rule(name)  # raises when absent
    return AccessList(tuple(r for r in acl.rules if r.name != name), dict(acl.defaults), acl.enabled)


def with_default(acl: AccessList, scope: Scope, action: Action | None) -> AccessList:
    defaults = dict(acl.defaults)
    if action is None:
        defaults.pop(scope, None)
    else:
        defaults[scope] = action
    return AccessList(acl.rules, defaults, acl.enabled)


def iter_scopes(acl: AccessList) -> Iterator[Scope]:
    """Scopes with rules or a default, in precedence order."""
    scopes = {r.scope for r in acl.rules} | set(acl.defaults)
    yield from sorted(scopes, key=lambda s: (PRECEDENCE.index(s.level), s.container, s.firm, s.product))
