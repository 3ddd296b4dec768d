"""FlexNet options files read into access-list rules, and what does not translate."""

from __future__ import annotations

from pathlib import Path

from licentia.core.acl import AccessList, Action, Held, Identity, Match, Refusal, Scope, decide
from licentia.core.flexnet import parse_options
from licentia.core.seats import ItemKey

OPTIONS = (Path(__file__).parent.parent / "cli" / "vendor.opt").read_text()
FEATURES = {"cad_pro": (10001, 7), "viewer": (10001, 8)}
CAD = ItemKey("130-1", 10001, 7)
VIEWER = ItemKey("130-1", 10001, 8)


def imported() -> AccessList:
    return parse_options(OPTIONS, FEATURES, "vendor.opt").merged_into(AccessList())


def test_groups_reserve_and_max_translate() -> None:
    result = parse_options(OPTIONS, FEATURES, "vendor.opt")
    by_name = {r.name: r for r in result.rules}
    support = by_name["opt7-reserve-support"]
    assert support.match is Match.USER and support.values == ("alice", "bob", "carol", "dave")
    assert support.reserve == 3 and support.scope == Scope.parse("product 10001:7")
    assert by_name["opt8-reserve-devel"].reserve == 4
    assert by_name["opt9-max-mallory"].limit == 2
    lab = by_name["opt11-exclude-lab"]
    assert lab.action is Action.DENY and lab.values == ("build-01", "build-02", "build-03")
    assert by_name["opt10-include-192.168.1._"].values == ("192.168.1.0/24",)
    assert result.defaults == {Scope.parse("product 10001:8"): Action.DENY}


def test_what_does_not_translate_is_named_by_line() -> None:
    notes = "\n".join(parse_options(OPTIONS, FEATURES, "vendor.opt").notes)
    assert "vendor.opt:9: the qualifier 'VERSION=2.0'" in notes
    assert "vendor.opt:13: TIMEOUTALL is not translated" in notes and "client_timeout" in notes
    assert "vendor.opt:14: type DISPLAY has no twin" in notes
    assert "vendor.opt:15: feature 'unknown_feature' is not mapped" in notes
    assert "vendor.opt:16: LINGER is not translated" in notes


def test_the_imported_rules_decide_as_flexnet_would() -> None:
    acl = imported()
    held = Held()
    # the 3 support seats of cad_pro stay for support (10 seats here: 3 + 4 reserved, 3 free)
    for name in ("x1", "x2", "x3"):
        d = decide(acl, CAD, Identity(name), 10, held, 0)
        assert d.granted
        held.take(d.charge, d.counted)
    d = decide(acl, CAD, Identity("x4"), 10, held, 0)
    assert not d.granted and d.refusal is Refusal.RESERVED
    assert decide(acl, CAD, Identity("dave"), 10, held, 0).charge == "opt7-reserve-support"
    # EXCLUDE by host group, EXCLUDEALL wins over a feature's own rules
    assert not decide(acl, CAD, Identity("alice", "build-02"), 10, Held(), 0).granted
    assert not decide(acl, CAD, Identity("eve"), 10, Held(), 0).granted
    assert not decide(acl, ItemKey("130-1", 10002, 1), Identity("eve"), 10, Held(), 0).granted
    # INCLUDE makes the feature's list exclusive
    assert decide(acl, VIEWER, Identity("u", "pc", "192.168.1.20"), 10, Held(), 0).granted
    d = decide(acl, VIEWER, Identity("u", "pc", "192.168.2.20"), 10, Held(), 0)
    assert not d.granted and d.rule == "default"


def test_an_internet_pattern_must_be_whole_octets() -> None:
    result = parse_options("INCLUDEALL INTERNET 10.*.1.*\nEXCLUDEALL INTERNET 10.2.3.4\n")
    assert "neither an address nor an a.b.c.* pattern" in result.notes[0]
    assert result.rules[0].match is Match.HOST and result.rules[0].values == ("10.2.3.4",)
