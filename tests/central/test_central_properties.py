"""Invariants, by property: ticket check characters, host names, the signed blacklist and its
delay, and the replacement decision."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, strategies as st

from licentia.central import ids
from licentia.central.policy import Policy, Rule, decide, parse_policy
from licentia.core.blacklist import (
    DAY,
    BlacklistEntry,
    check_blacklist,
    make_blacklist,
    read_blacklist,
)
from licentia.crypto import new_signing_key, signing_public_key
from licentia.model import ContainerSerial, ErrorCode, LicentiaError

KEY = new_signing_key()
PUBLIC = signing_public_key(KEY)
OTHER = new_signing_key()

tickets = st.builds(lambda _: ids.new_ticket(), st.integers())


@given(tickets)
def test_a_ticket_parses_back_in_any_case_and_spacing(ticket: str) -> None:
    assert ids.parse_ticket(ticket) == ticket
    assert ids.parse_ticket(ticket.lower().replace("-", " ")) == ticket
    assert ids.parse_ticket(ticket.replace("-", "")) == ticket


@given(tickets, st.integers(0, 24), st.sampled_from(ids.ALPHABET))
def test_every_single_mistyped_character_is_caught(ticket: str, position: int, replacement: str) -> None:
    chars = ticket.replace("-", "")
    assume(chars[position] != replacement)
    typo = chars[:position] + replacement + chars[position + 1 :]
    with pytest.raises(LicentiaError) as exc:
        ids.parse_ticket(typo)
    assert exc.value.code == ErrorCode.TICKET_INVALID


def test_nearly_every_swap_of_neighbours_is_caught() -> None:
    caught = total = 0
    for _ in range(300):
        chars = ids.new_ticket().replace("-", "")
        for i in range(24):
            if chars[i] == chars[i + 1]:
                continue
            total += 1
            swapped = chars[:i] + chars[i + 1] + chars[i] + chars[i + 2 :]
            try:
                ids.parse_ticket(swapped)
            except LicentiaError:
                caught += 1
    assert caught / total > 0.99


@given(st.text(min_size=1, max_size=30))
def test_host_names_are_ascii_letters_digits_hyphens(name: str) -> None:
    labels = name.split(".")
    valid = all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )
    if valid:
        assert ids.check_host_name(name) == name.lower()
    else:
        with pytest.raises(LicentiaError) as exc:
            ids.check_host_name(name)
        assert exc.value.code == ErrorCode.HOST_NAME_INVALID


serials = st.builds(ContainerSerial, st.sampled_from([1, 2, 3, 128, 129, 130, 131, 140]), st.integers(0, 2**32 - 1))
entries = st.lists(
    st.builds(BlacklistEntry, serials, st.integers(0, 2**33), st.sampled_from(["lost", "stolen", "replaced"])),
    max_size=8, unique_by=lambda e: e.serial,
)


@given(entries, st.integers(0, 2**33))
def test_blacklist_round_trips_and_refuses_other_keys(listed: list[BlacklistEntry], now: int) -> None:
    data = make_blacklist(6000010, listed, KEY, now)
    bl = read_blacklist(data, PUBLIC, 6000010)
    assert sorted(bl.entries, key=lambda e: e.serial) == sorted(listed, key=lambda e: e.serial)
    assert bl.issued_at == now
    with pytest.raises(LicentiaError) as exc:
        read_blacklist(data, signing_public_key(OTHER))
    assert exc.value.code == ErrorCode.BLACKLIST_INVALID
    with pytest.raises(LicentiaError):
        read_blacklist(data, PUBLIC, 6000011)


@given(entries, st.data())
def test_every_flipped_byte_is_refused(listed: list[BlacklistEntry], data: st.DataObject) -> None:
    blob = bytearray(make_blacklist(6000010, listed, KEY, 1))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(LicentiaError) as exc:
        read_blacklist(bytes(blob), PUBLIC)
    assert exc.value.code == ErrorCode.BLACKLIST_INVALID


@given(serials, st.integers(0, 365), st.integers(0, 2**32), st.integers(0, 400 * DAY), st.booleans())
def test_the_lock_waits_for_the_delay(serial: ContainerSerial, delay: int, issued: int, after: int, seen: bool) -> None:
    bl = read_blacklist(make_blacklist(1, [BlacklistEntry(serial, 0, "stolen")], KEY, issued), PUBLIC)
    since = issued + 5 * DAY if seen else None
    start = since if since is not None else issued
    verdict = check_blacklist(bl, serial, start + after, delay_days=delay, known_since=since)
    assert verdict.listed and verdict.lock == (after >= delay * DAY)
    other = ContainerSerial(serial.mask, (serial.number + 1) % 2**32)
    assert not check_blacklist(bl, other, start + after, delay_days=delay).listed


rules = st.builds(Rule, st.booleans(), st.none() | st.integers(0, 5), st.integers(0, 100), st.just(()))


@given(rules, st.lists(st.integers(0, 1000), max_size=6), st.integers(0, 2000), st.booleans())
def test_replacement_decision_follows_the_rule(rule: Rule, earlier: list[int], now: int, same: bool) -> None:
    assume(all(e <= now for e in earlier))  # earlier replacements lie in the past
    policy = Policy(replace=rule, same_device=rule)
    d = decide(policy, same_device=same, earlier=earlier, now=now)
    expected = (
        rule.allowed
        and (rule.max_count is None or len(earlier) < rule.max_count)
        and (not earlier or now >= max(earlier) + rule.min_wait)
    )
    assert d.within_policy == expected and d.reason
    assert parse_policy(policy.to_dict()) == policy
