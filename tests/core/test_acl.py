"""Access lists and reservations: the seed's 3/4/3 example, precedence, and invariants."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, strategies as st

from licentia.core.acl import (
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
    from_document,
    to_toml,
    with_default,
    with_rule,
    without_rule,
)
from licentia.core.seats import ItemKey
from licentia.model import ErrorCode, LicentiaError

KEY = ItemKey("130-1001", 10001, 7)
OTHER = ItemKey("130-2002", 10002, 9)
PRODUCT = Scope.parse("product 10001:7")


def seed_list() -> AccessList:
    """The seed's example: 10 seats, 3 reserved for support, 4 for development, 3 for anyone."""
    return from_document({"rule": [
        {"name": "support", "scope": "product 10001:7", "group": "support", "reserve": 3},
        {"name": "development", "scope": "product 10001:7", "group": "development", "reserve": 4},
    ]})


def member(user: str, *groups: str) -> Identity:
    return Identity(user=user, host=f"{user}-pc", address="10.0.0.9", groups=frozenset(groups))


def take(acl: AccessList, held: Held, who: Identity, quantity: int | None = 10, key: ItemKey = KEY) -> Decision:
    d = decide(acl, key, who, quantity, held, 1000.0)
    if d.granted:
        held.take(d.charge, d.counted)
    return d


# -- the seed's example ---------------------------------------------------------------------


def test_seed_example_fourth_support_user_takes_a_free_seat() -> None:
    acl, held = seed_list(), Held()
    charges = [take(acl, held, member(f"s{i}", "support")).charge for i in range(4)]
    assert charges == ["support"] * 4
    assert held.by_charge == {"support": 4}
    # one of the 3 free seats went to the fourth support user: two remain for anyone
    assert take(acl, held, member("anne")).granted
    assert take(acl, held, member("bert")).granted
    third = take(acl, held, member("carl"))
    assert not third.granted and third.code is ErrorCode.ACCESS_LIST_DENIED
    assert third.refusal is Refusal.RESERVED
    assert 'rule "development"' in third.message and "4 for" in third.message
    assert "user carl" in third.message


def test_seed_example_when_free_seats_are_gone_only_reserved_ones_remain() -> None:
    acl, held = seed_list(), Held()
    for name in ("anne", "bert", "carl"):
        assert take(acl, held, member(name)).charge is None  # the 3 free seats
    outsider = take(acl, held, member("dora"))
    assert not outsider.granted and outsider.refusal is Refusal.RESERVED
    assert 'rule "support"' in outsider.message and 'rule "development"' in outsider.message
    for i in range(3):
        assert take(acl, held, member(f"s{i}", "support")).charge == "support"
    fourth = take(acl, held, member("s3", "support"))
    assert not fourth.granted and fourth.refusal is Refusal.RESERVED
    assert 'rule "development"' in fourth.message and 'rule "support"' not in fourth.message
    for i in range(4):
        assert take(acl, held, member(f"d{i}", "development")).charge == "development"
    full = take(acl, held, member("d4", "development"))
    assert not full.granted and full.code is ErrorCode.NO_MORE_LICENSES and full.refusal is Refusal.NO_SEATS
    assert held.total == 10


def test_a_released_reserved_seat_returns_to_its_group() -> None:
    acl, held = seed_list(), Held()
    for name in ("anne", "bert", "carl"):
        take(acl, held, member(name))
    for i in range(3):
        take(acl, held, member(f"s{i}", "support"))
    held.give_back("support")
    assert not take(acl, held, member("dora")).granted
    assert take(acl, held, member("s9", "support")).charge == "support"


def test_a_member_of_two_groups_uses_the_reservation_with_room() -> None:
    acl, held = seed_list(), Held()
    for i in range(3):
        take(acl, held, member(f"s{i}", "support"))
    both = take(acl, held, member("eve", "support", "development"))
    assert both.charge == "development"


# -- precedence ------------------------------------------------------------------------------


def rules(*specs: tuple[str, str, str, str, str]) -> AccessList:
    out = []
    for name, scope, action, match, value in specs:
        out.append(Rule(name, Scope.parse(scope), Action(action), Match(match),
                        () if match == "anyone" else (value,)))
    return AccessList(tuple(out))


@pytest.mark.parametrize(("specific", "general"), [
    ("product 10001:7", "firm 10001"),
    ("firm 10001", "container 130-1001"),
    ("container 130-1001", "server"),
    ("product 10001:7", "server"),
])
def test_the_more_specific_scope_decides(specific: str, general: str) -> None:
    alice = member("alice")
    allow_specific = rules(("a", specific, "allow", "user", "alice"), ("d", general, "deny", "anyone", ""))
    assert decide(allow_specific, KEY, alice, 5, Held(), 0).granted
    deny_specific = rules(("d", specific, "deny", "user", "alice"), ("a", general, "allow", "anyone", ""))
    d = decide(deny_specific, KEY, alice, 5, Held(), 0)
    assert not d.granted and d.rule == "d" and d.refusal is Refusal.DENIED
    assert f'rule "d" (deny user alice at {specific})' in d.message


def test_a_scope_with_no_matching_rule_passes_to_the_next() -> None:
    acl = rules(("bob-only", "product 10001:7", "allow", "user", "bob"),
                ("no-lab", "server", "deny", "subnet", "10.0.0.0/8"))
    d = decide(acl, KEY, member("alice"), 5, Held(), 0)
    assert not d.granted and d.rule == "no-lab"
    assert decide(acl, KEY, member("bob"), 5, Held(), 0).granted


def test_scopes_that_do_not_cover_the_item_are_not_consulted() -> None:
    acl = rules(("d1", "product 10001:8", "deny", "anyone", ""), ("d2", "firm 10002", "deny", "anyone", ""),
                ("d3", "container 130-9", "deny", "anyone", ""))
    assert decide(acl, KEY, member("alice"), 5, Held(), 0).granted
    assert not decide(acl, OTHER, member("alice"), 5, Held(), 0).granted


def test_default_action_of_the_most_specific_scope_that_sets_one() -> None:
    acl = with_default(rules(("a", "server", "allow", "user", "bob")), Scope.parse("server"), Action.DENY)
    d = decide(acl, KEY, member("alice"), 5, Held(), 0)
    assert not d.granted and d.rule == "default" and "default action at server is deny" in d.message
    acl = with_default(acl, Scope.parse("firm 10001"), Action.ALLOW)
    assert decide(acl, KEY, member("alice"), 5, Held(), 0).granted
    assert not decide(acl, OTHER, member("alice"), 5, Held(), 0).granted
    assert decide(acl, OTHER, member("bob"), 5, Held(), 0).granted


def test_deny_wins_over_allow_in_the_same_scope_whatever_the_order() -> None:
    for first, second in (("allow", "deny"), ("deny", "allow")):
        acl = rules(("r1", "server", first, "group", "staff"), ("r2", "server", second, "user", "alice"))
        d = decide(acl, KEY, member("alice", "staff"), 5, Held(), 0)
        assert not d.granted and d.refusal is Refusal.DENIED


def test_hosts_subnets_and_addresses() -> None:
    acl = rules(("lab", "server", "deny", "subnet", "192.168.7.0/24"),
                ("ws", "server", "deny", "host", "build-01"),
                ("ip", "server", "deny", "host", "10.1.2.3"),
                ("v6", "server", "deny", "subnet", "fd00::/8"))
    assert not decide(acl, KEY, Identity("u", "pc", "192.168.7.200"), 5, Held(), 0).granted
    assert not decide(acl, KEY, Identity("u", "pc", "::ffff:192.168.7.1"), 5, Held(), 0).granted
    assert not decide(acl, KEY, Identity("u", "BUILD-01.corp.example", "10.0.0.1"), 5, Held(), 0).granted
    assert not decide(acl, KEY, Identity("u", "pc", "10.1.2.3"), 5, Held(), 0).granted
    assert not decide(acl, KEY, Identity("u", "pc", "fd12::1"), 5, Held(), 0).granted
    assert decide(acl, KEY, Identity("u", "pc", "192.168.8.1"), 5, Held(), 0).granted


def test_users_and_groups_compare_without_case() -> None:
    acl = rules(("d", "server", "deny", "user", "CORP\\Alice"), ("g", "server", "deny", "group", "Contractors"))
    assert not decide(acl, KEY, Identity("corp\\alice"), 5, Held(), 0).granted
    assert not decide(acl, KEY, Identity("bob", groups=frozenset({"contractors"})), 5, Held(), 0).granted


# -- maxima, expiry, directory --------------------------------------------------------------


def test_a_maximum_caps_the_seats_of_everyone_the_rule_matches() -> None:
    acl = AccessList((Rule("interns", Scope.parse("server"), Action.ALLOW, Match.GROUP, ("interns",), limit=2),))
    held = Held()
    assert take(acl, held, member("i1", "interns")).counted == ("interns",)
    take(acl, held, member("i2", "interns"))
    d = take(acl, held, member("i3", "interns"))
    assert not d.granted and d.refusal is Refusal.LIMIT and "all 2 seats it allows are held" in d.message
    assert take(acl, held, member("bob")).granted
    held.give_back("interns", ["interns"])
    assert take(acl, held, member("i3", "interns")).granted


def test_an_expired_rule_no_longer_applies() -> None:
    acl = AccessList((Rule("temp", Scope.parse("server"), Action.DENY, Match.USER, ("alice",), expires=500.0),))
    assert not decide(acl, KEY, member("alice"), 5, Held(), 499.0).granted
    assert decide(acl, KEY, member("alice"), 5, Held(), 500.0).granted


def test_unknown_groups_block_only_where_a_group_rule_could_refuse() -> None:
    nobody = Identity("alice", "pc", "10.0.0.1", groups=None)
    reserving = seed_list()
    d = decide(reserving, KEY, nobody, 10, Held(), 0)
    assert d.granted and d.charge is None  # a free seat, as for anyone outside the groups
    assert not reserving.needs_groups(OTHER) and reserving.needs_groups(KEY)
    denying = rules(("no-contractors", "server", "deny", "group", "contractors"))
    d = decide(denying, KEY, nobody, 10, Held(), 0)
    assert not d.granted and d.refusal is Refusal.DIRECTORY and "directory could not be asked" in d.message


def test_a_disabled_or_empty_list_grants_everything() -> None:
    off = AccessList((Rule("d", SERVER_SCOPE, Action.DENY, Match.ANYONE),), enabled=False)
    assert decide(off, KEY, member("a"), 1, Held(), 0).granted
    assert decide(AccessList(), KEY, member("a"), 1, Held(), 0).granted


SERVER_SCOPE = Scope.parse("server")


# -- documents -------------------------------------------------------------------------------


def test_document_round_trip_through_toml() -> None:
    acl = with_default(seed_list(), PRODUCT, Action.DENY)
    acl = with_rule(acl, Rule("lab", SERVER_SCOPE, Action.DENY, Match.SUBNET, ("10.9.0.0/16", "10.10.0.0/16"),
                              expires=1900000000.0, note='from "lab" policy'), position=1)
    text = to_toml(acl)
    again = from_document(tomllib.loads(text))
    assert again.rules == acl.rules and dict(again.defaults) == dict(acl.defaults)
    assert [r.name for r in without_rule(again, "lab").rules] == ["support", "development"]


@pytest.mark.parametrize(("doc", "words"), [
    ({"rule": [{"name": "a", "group": "x", "user": "y"}]}, "exactly one of"),
    ({"rule": [{"name": "a", "group": "x", "reserve": -1}]}, "reserve -1"),
    ({"rule": [{"name": "a", "action": "deny", "group": "x", "reserve": 2}]}, "deny rule cannot reserve"),
    ({"rule": [{"name": "a", "subnet": "10.0.0.0/33"}]}, "is not a subnet"),
    ({"rule": [{"name": "a", "user": "x"}, {"name": "a", "user": "y"}]}, "two rules are named"),
    ({"rule": [{"name": "a", "user": "x", "scope": "product 7"}]}, "scope 'product 7'"),
    ({"rule": [{"name": "a", "user": "x", "colour": "red"}]}, "unknown key colour"),
    ({"version": 2}, "version 2 is not supported"),
    ({"defaults": {"server": "maybe"}}, "use allow or deny"),
])
def test_loader_names_the_mistake(doc: dict[str, object], words: str) -> None:
    with pytest.raises(LicentiaError) as info:
        from_document(doc, "acl.toml")
    assert info.value.code is ErrorCode.WRONG_CONTENT and words in info.value.message
    assert info.value.message.startswith("acl.toml: ")


def test_scope_parse_and_text() -> None:
    for text in ("server", "container 130-1001", "firm 10001", "product 10001:7"):
        assert str(Scope.parse(text)) == text
    assert Scope.parse("product 10001:7").level is Level.PRODUCT


# -- invariants ------------------------------------------------------------------------------

GROUPS = ("support", "development", "qa")
ident = st.builds(
    lambda u, gs, n: Identity(f"user{u}", f"host{u % 4}", f"10.0.{n}.{u}", frozenset(gs)),
    st.integers(0, 20), st.frozensets(st.sampled_from(GROUPS), max_size=2), st.integers(0, 3),
)
rule_st = st.builds(
    lambda scope, action, group, reserve, limit: Rule(
        "x", Scope.parse(scope), Action(action), Match.GROUP, (group,),
        reserve if action == "allow" else 0,
        (reserve + limit if limit is not None else None) if action == "allow" else None),
    st.sampled_from(["server", "product 10001:7", "firm 10001", "container 130-1001"]),
    st.sampled_from(["allow", "allow", "deny"]), st.sampled_from(GROUPS),
    st.integers(0, 4), st.none() | st.integers(0, 3),
)


def named(rs: list[Rule]) -> AccessList:
    return AccessList(tuple(Rule(f"r{i}", r.scope, r.action, r.match, r.values, r.reserve, r.limit)
                            for i, r in enumerate(rs)))


steps = st.lists(st.tuples(st.booleans(), ident), max_size=40)


@given(st.lists(rule_st, max_size=6), st.integers(1, 12), steps)
def test_never_more_seats_than_the_quantity_and_reservations_kept(
        rs: list[Rule], quantity: int, ops: list[tuple[bool, Identity]]) -> None:
    acl = named(rs)
    held = Held()
    seats: list[Decision] = []
    for release, who in ops:
        if release and seats:
            d = seats.pop(0)
            held.give_back(d.charge, d.counted)
            continue
        d = decide(acl, KEY, who, quantity, held, 0.0)
        if d.granted:
            held.take(d.charge, d.counted)
            seats.append(d)
        assert held.total <= quantity
        assert sum(held.by_charge.values()) == held.total
        for r in acl.rules:
            if r.limit is not None:
                assert held.by_limit.get(r.name, 0) <= r.limit
        # seats charged to no rule or beyond a reservation never eat into reservations
        room, reserve = quantity, {}
        for r in acl.reserved(KEY, 0.0):
            reserve[r.name] = min(r.reserve, room)
            room -= reserve[r.name]
        free_used = held.by_charge.get(None, 0) + sum(
            max(0, n - reserve.get(c, 0)) for c, n in held.by_charge.items() if c is not None)
        assert free_used <= room


@given(st.integers(1, 5), st.integers(0, 5), st.integers(0, 8), st.integers(0, 3))
def test_a_groups_reserved_seats_are_never_taken_by_others(
        reserved: int, free: int, outsiders: int, members_first: int) -> None:
    quantity = reserved + free
    acl = AccessList((Rule("support", PRODUCT, Action.ALLOW, Match.GROUP, ("support",), reserve=reserved),))
    held = Held()
    for i in range(min(members_first, reserved)):
        assert take(acl, held, member(f"s{i}", "support"), quantity).granted
    for i in range(outsiders):
        take(acl, held, member(f"o{i}", "qa"), quantity)
    assert held.by_charge.get(None, 0) <= free
    # every reserved seat not yet used is still there for a member
    for i in range(reserved - min(members_first, reserved)):
        d = take(acl, held, member(f"late{i}", "support"), quantity)
        assert d.granted, d.message


@given(st.sampled_from(list(Level)), st.sampled_from(list(Match)), st.booleans(), st.integers(0, 3))
def test_deny_always_wins_over_allow_at_the_same_level(
        level: Level, match: Match, deny_first: bool, extra_allows: int) -> None:
    scope = {Level.SERVER: "server", Level.CONTAINER: "container 130-1001", Level.FIRM: "firm 10001",
             Level.PRODUCT: "product 10001:7"}[level]
    values = {Match.USER: ("alice",), Match.HOST: ("pc1",), Match.SUBNET: ("10.0.0.0/8",),
              Match.GROUP: ("staff",), Match.ANYONE: ()}[match]
    deny = Rule("deny", Scope.parse(scope), Action.DENY, match, values)
    allows = [Rule(f"allow{i}", Scope.parse(scope), Action.ALLOW, Match.USER, ("alice",), reserve=1)
              for i in range(extra_allows + 1)]
    acl = AccessList(tuple([deny, *allows] if deny_first else [*allows, deny]))
    d = decide(acl, KEY, Identity("alice", "pc1", "10.2.3.4", frozenset({"staff"})), 5, Held(), 0.0)
    assert not d.granted and d.rule == "deny" and d.refusal is Refusal.DENIED


def test_check_warns_of_reservations_beyond_the_quantity_and_scopes_without_items() -> None:
    acl = with_rule(seed_list(), Rule("lab", Scope.parse("firm 20000"), Action.DENY, Match.ANYONE))
    warnings = acl.check({KEY: 5, OTHER: None})
    assert any("7 seats are reserved but the item has 5" in w for w in warnings)
    assert any("no item served here falls under firm 20000" in w for w in warnings)
    assert acl.check({KEY: 10}) == ["no item served here falls under firm 20000"]
