"""Fuzzy machine binding: the secret comes back iff enough weight still matches, never wrong."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from licentia.crypto import fuzzy
from licentia.crypto.fuzzy import (
    DEFAULT_COST,
    MAX_COST,
    BindingBroken,
    BindingOutcome,
    MalformedBinding,
    bind,
    describe,
    threshold_for,
    unbind,
)
from licentia.model import ErrorCode, MachineProperty, Tolerance

COST = 8  # fast scrypt for tests; production uses DEFAULT_COST
TINY = 4  # even faster, for the exhaustive tamper sweeps

SOME = settings(max_examples=40, deadline=None)


def prop(name: str, value: bytes, weight: int) -> MachineProperty:
    return MachineProperty(name=name, value=value, weight=weight, stability="test")


MACHINE = [
    prop("machine-id", b"4c4c4544-0042", 4),
    prop("mac", b"52:54:00:12:34:56", 3),
    prop("disk", b"WD-WX12A3456789", 3),
    prop("cpu", b"GenuineIntel 6/85", 1),
    prop("hostname", b"build-07", 0),
]


def changed(p: MachineProperty, value: bytes | None = None) -> MachineProperty:
    return prop(p.name, value if value is not None else p.value + b"'", p.weight)


def outcome_of(blob: bytes, properties: list[MachineProperty]) -> BindingOutcome | Exception:
    try:
        return unbind(blob, properties)
    except (MalformedBinding, BindingBroken) as error:
        return error


# -- the plain cases -----------------------------------------------------------------------


def test_the_same_machine_rebuilds_the_secret() -> None:
    secret = os.urandom(32)
    blob = bind(secret, MACHINE, Tolerance.MEDIUM.fraction, test_cost=COST)
    outcome = unbind(blob, MACHINE)
    assert outcome.secret == secret
    assert outcome.matched_weight == outcome.total_weight == 11
    assert outcome.needed_weight == threshold_for(11, Tolerance.MEDIUM.fraction)
    assert outcome.matched == ("machine-id", "mac", "disk", "cpu")
    assert outcome.missing == outcome.changed == ()
    assert outcome.spare_weight == 11 - outcome.needed_weight


def test_the_default_cost_round_trips() -> None:
    secret = os.urandom(32)
    blob = bind(secret, MACHINE[:2], Tolerance.LOOSE.fraction)
    assert describe(blob).cost == DEFAULT_COST
    assert unbind(blob, MACHINE).secret == secret


def test_describe_reads_the_blob_without_values() -> None:
    blob = bind(os.urandom(32), MACHINE, 0.5, test_cost=COST)
    info = describe(blob)
    assert info.version == fuzzy.VERSION
    assert info.names == ("machine-id", "mac", "disk", "cpu")  # weight 0 is not bound
    assert info.weights == (4, 3, 3, 1)
    assert info.total_weight == 11
    assert info.threshold == 6
    assert info.cost == COST
    assert info.secret_length == 32


def test_a_change_within_tolerance_keeps_the_secret_and_says_what_changed() -> None:
    secret = os.urandom(32)
    blob = bind(secret, MACHINE, 0.6, test_cost=COST)  # needs 7 of 11
    now = [MACHINE[0], changed(MACHINE[1]), MACHINE[2]]  # cpu gone, mac changed: 7 left
    outcome = unbind(blob, now)
    assert outcome.secret == secret
    assert outcome.matched_weight == 7
    assert outcome.spare_weight == 0
    assert outcome.changed == ("mac",)
    assert outcome.missing == ("cpu",)


def test_too_many_changes_break_the_binding() -> None:
    secret = os.urandom(32)
    blob = bind(secret, MACHINE, 0.6, test_cost=COST)
    now = [MACHINE[0], changed(MACHINE[1]), changed(MACHINE[2]), MACHINE[4]]
    with pytest.raises(BindingBroken) as caught:
        unbind(blob, now)
    error = caught.value
    # which of the present properties changed is not known: that would be an oracle
    assert (error.matched_weight, error.total_weight, error.needed_weight) == (None, 11, 7)
    assert error.present_weight == 10
    assert error.matched == ()
    assert error.changed == ("machine-id", "mac", "disk")
    assert error.missing == ("cpu",)
    assert error.code is ErrorCode.REACTIVATION_REQUIRED
    assert "10 of 11" in str(error) and "missing: cpu" in str(error)


def test_current_weights_and_order_do_not_matter() -> None:
    secret = os.urandom(16)
    blob = bind(secret, MACHINE, 1.0, test_cost=COST)
    reweighed = [prop(p.name, p.value, 0) for p in reversed(MACHINE)]
    assert unbind(blob, reweighed).secret == secret


def test_weight_zero_properties_are_not_bound() -> None:
    secret = os.urandom(32)
    blob = bind(secret, MACHINE, 1.0, test_cost=COST)
    assert unbind(blob, [*MACHINE[:4], changed(MACHINE[4])]).secret == secret


def test_each_binding_is_fresh() -> None:
    secret = os.urandom(32)
    first = bind(secret, MACHINE, 0.5, test_cost=COST)
    second = bind(secret, MACHINE, 0.5, test_cost=COST)
    assert first != second
    assert len(first) == len(second)


def test_names_may_be_any_text() -> None:
    secret = os.urandom(32)
    props = [prop("ディスク", b"serial", 2), prop("n" * 255, b"", 1)]
    blob = bind(secret, props, 1.0, test_cost=COST)
    assert describe(blob).names == ("ディスク", "n" * 255)
    assert unbind(blob, props).secret == secret


def test_the_outcome_and_the_refusal_never_show_the_secret() -> None:
    secret = b"S" * 32
    blob = bind(secret, MACHINE, 0.9, test_cost=COST)
    outcome = unbind(blob, MACHINE)
    assert secret.hex() not in repr(outcome) and repr(secret) not in repr(outcome)
    assert "SSSS" not in repr(outcome)
    with pytest.raises(BindingBroken) as caught:
        unbind(blob, MACHINE[:1])
    error = caught.value
    for text in (str(error), repr(error), repr(error.args), repr(vars(error))):
        assert "SSSS" not in text and secret.hex() not in text


def test_properties_absent_here_cost_no_key_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = bind(os.urandom(32), MACHINE, 0.3, test_cost=COST)
    derived: list[bytes] = []
    real = fuzzy._derive

    def counting(value: bytes, salt: bytes, name: bytes, cost: int) -> bytes:
        derived.append(name)
        return real(value, salt, name, cost)

    monkeypatch.setattr(fuzzy, "_derive", counting)
    outcome = unbind(blob, [MACHINE[0], MACHINE[4]])
    assert outcome.missing == ("mac", "disk", "cpu")
    assert derived == [b"machine-id"]


# -- threshold arithmetic ------------------------------------------------------------------


def test_threshold_takes_the_fraction_as_written() -> None:
    assert threshold_for(20, 0.65) == 13
    assert threshold_for(100, 0.07) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    assert threshold_for(10, 0.0) == 1
    assert threshold_for(10, 0.01) == 1
    assert threshold_for(10, 1.0) == 10
    assert threshold_for(3, 1) == 3


@given(total=st.integers(1, 255), percent=st.integers(0, 100))
def test_threshold_is_the_ceiling_of_the_exact_fraction(total: int, percent: int) -> None:
    fraction = percent / 100
    expected = max(1, -(-Fraction(percent, 100) * total // 1))
    assert threshold_for(total, fraction) == expected


@pytest.mark.parametrize("tolerance", list(Tolerance))
def test_every_tolerance_gives_a_usable_threshold(tolerance: Tolerance) -> None:
    for total in range(1, 256):
        assert 1 <= threshold_for(total, tolerance.fraction) <= total
    assert (
        threshold_for(100, Tolerance.LOOSE.fraction)
        <= threshold_for(100, Tolerance.MEDIUM.fraction)
        <= threshold_for(100, Tolerance.STRICT.fraction)
    )


@pytest.mark.parametrize("fraction", [-0.1, 1.01, float("nan"), float("inf")])
def test_threshold_refuses_fractions_outside_0_to_1(fraction: float) -> None:
    with pytest.raises(ValueError):
        threshold_for(10, fraction)
    with pytest.raises(ValueError):
        bind(b"k" * 32, MACHINE, fraction, test_cost=COST)


# -- the invariant: rebuilt iff the matching weight reaches the threshold -----------------


@st.composite
def machines(draw: st.DrawFn) -> list[MachineProperty]:
    count = draw(st.integers(1, 7))
    names = draw(
        st.lists(st.text(min_size=1, max_size=8), min_size=count, max_size=count, unique=True)
    )
    weights = draw(st.lists(st.integers(0, 5), min_size=count, max_size=count))
    if sum(weights) == 0:
        weights[0] = 1
    values = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
    return [prop(n, v, w) for n, v, w in zip(names, values, weights, strict=True)]


@SOME
@given(
    machine=machines(),
    secret=st.binary(min_size=1, max_size=40),
    percent=st.integers(0, 100),
    data=st.data(),
)
def test_the_secret_comes_back_iff_the_matching_weight_reaches_the_threshold(
    machine: list[MachineProperty], secret: bytes, percent: int, data: st.DataObject
) -> None:
    blob = bind(secret, machine, percent / 100, test_cost=COST)
    total = sum(p.weight for p in machine)
    needed = threshold_for(total, percent / 100)
    fates = data.draw(
        st.lists(
            st.sampled_from(["same", "changed", "missing"]),
            min_size=len(machine),
            max_size=len(machine),
        )
    )
    now = []
    for p, fate in zip(machine, fates, strict=True):
        if fate == "same":
            now.append(p)
        elif fate == "changed":
            now.append(changed(p))
    extra = data.draw(st.booleans())
    if extra:
        now.append(prop("\x00not bound", b"whatever", 5))
    bound = [(p, f) for p, f in zip(machine, fates, strict=True) if p.weight > 0]
    matched = sum(p.weight for p, f in bound if f == "same")
    expect_matched = tuple(p.name for p, f in bound if f == "same")
    expect_changed = tuple(p.name for p, f in bound if f == "changed")
    expect_missing = tuple(p.name for p, f in bound if f == "missing")

    result = outcome_of(blob, now)
    if matched >= needed:
        assert isinstance(result, BindingOutcome)
        assert result.secret == secret
        facts = (result.matched_weight, result.total_weight, result.needed_weight)
        names = (result.matched, result.changed, result.missing)
        assert facts == (matched, total, needed)
        assert names == (expect_matched, expect_changed, expect_missing)
    else:
        assert isinstance(result, BindingBroken)
        # the same refusal whichever of the present properties changed
        present = tuple(p.name for p, f in bound if f != "missing")
        assert (result.matched_weight, result.total_weight, result.needed_weight) == (None, total, needed)
        assert (result.matched, result.changed, result.missing) == ((), present, expect_missing)


# -- tampering: any change gives a refusal or the right secret, never a wrong one ----------


def rechecksummed(blob: bytes) -> bytes:
    """What a deliberate forger does after editing: fix the trailing checksum."""
    body = blob[: -fuzzy._CHECKSUM_SIZE]
    return body + fuzzy._checksum_v2(body)


def flipped(blob: bytes, index: int, bit: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 1 << bit
    return bytes(data)


TAMPER_MACHINE = [prop("a", b"alpha", 1), prop("b", b"beta", 2), prop("c", b"gamma", 1)]


def test_any_accidental_bit_flip_is_reported_as_malformed() -> None:
    secret = os.urandom(16)
    blob = bind(secret, TAMPER_MACHINE, 0.5, test_cost=TINY)
    for index in range(len(blob)):
        for bit in range(8):
            with pytest.raises(MalformedBinding):
                unbind(flipped(blob, index, bit), TAMPER_MACHINE)
            with pytest.raises(MalformedBinding):
                describe(flipped(blob, index, bit))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75, 1.0])
def test_any_forged_bit_flip_never_yields_a_wrong_secret(fraction: float) -> None:
    # needs 1, 2, 3 or 4 of the 4 shares; a, b (2 shares) and c sit in that order.
    secret = os.urandom(16)
    blob = bind(secret, TAMPER_MACHINE, fraction, test_cost=TINY)
    kinds: set[str] = set()
    for index in range(len(blob) - fuzzy._CHECKSUM_SIZE):
        for bit in range(8):
            result = outcome_of(rechecksummed(flipped(blob, index, bit)), TAMPER_MACHINE)
            if isinstance(result, BindingOutcome):
                assert result.secret == secret
                # only the shares are not covered by the commitment: a flipped share makes
                # its property a changed one
                assert result.changed != ()
                assert result.matched_weight >= result.needed_weight
                kinds.add("secret")
            else:
                assert isinstance(result, MalformedBinding | BindingBroken)
                kinds.add(type(result).__name__)
    expected = {"MalformedBinding", "BindingBroken"} | ({"secret"} if fraction < 1 else set())
    assert kinds == expected


@SOME
@given(machine=machines(), secret=st.binary(min_size=1, max_size=24), data=st.data())
def test_forged_corruption_anywhere_never_yields_a_wrong_secret(
    machine: list[MachineProperty], secret: bytes, data: st.DataObject
) -> None:
    blob = bind(secret, machine, data.draw(st.floats(0, 1)), test_cost=TINY)
    body = bytearray(blob[: -fuzzy._CHECKSUM_SIZE])
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] ^= data.draw(st.integers(1, 255))  # a different byte
    forged = bytes(body) + fuzzy._checksum_v2(bytes(body))
    result = outcome_of(forged, machine)
    if isinstance(result, BindingOutcome):
        assert result.secret == secret
    else:
        assert isinstance(result, MalformedBinding | BindingBroken)


def test_shares_that_miss_the_commitment_never_give_a_secret() -> None:
    # A blob whose commitment names another secret: the shares rebuild one, the
    # commitment refuses it, and unbind hands out nothing.
    secret = os.urandom(32)
    blob = bind(secret, TAMPER_MACHINE, 0.5, test_cost=TINY)
    header = fuzzy._HEADER_V2.size
    forged = rechecksummed(blob[:header] + os.urandom(16) + blob[header + 16 :])
    with pytest.raises(BindingBroken):
        unbind(forged, TAMPER_MACHINE)


def test_a_forged_lower_threshold_does_not_help() -> None:
    secret = os.urandom(32)
    blob = bind(secret, TAMPER_MACHINE, 1.0, test_cost=TINY)
    header = bytearray(blob[: fuzzy._HEADER.size])
    header[6] = 1  # threshold byte: claim one share suffices
    forged = rechecksummed(bytes(header) + blob[fuzzy._HEADER.size :])
    assert describe(forged).threshold == 1
    with pytest.raises(BindingBroken) as caught:
        unbind(forged, TAMPER_MACHINE)
    assert caught.value.matched_weight is None


# -- malformed blobs -----------------------------------------------------------------------


def reference_blob() -> bytes:
    return bind(os.urandom(32), TAMPER_MACHINE, 0.5, test_cost=TINY)


def test_every_truncation_is_malformed() -> None:
    blob = reference_blob()
    for length in range(len(blob)):
        with pytest.raises(MalformedBinding):
            unbind(blob[:length], TAMPER_MACHINE)
        with pytest.raises(MalformedBinding):
            unbind(rechecksummed(blob[:length]) if length > 16 else blob[:length], TAMPER_MACHINE)


@pytest.mark.parametrize("tail", [b"\x00", b"trailing", os.urandom(64)])
def test_trailing_bytes_are_malformed(tail: bytes) -> None:
    blob = reference_blob()
    with pytest.raises(MalformedBinding):
        unbind(blob + tail, TAMPER_MACHINE)
    with pytest.raises(MalformedBinding):
        unbind(rechecksummed(blob[: -fuzzy._CHECKSUM_SIZE] + tail + bytes(16)), TAMPER_MACHINE)


Edit = Callable[[bytes], bytes]


def _set_byte(index: int, value: int) -> Edit:
    return lambda blob: blob[:index] + bytes([value]) + blob[index + 1 :]


@pytest.mark.parametrize(
    "edit",
    [
        _set_byte(0, ord("X")),  # magic
        _set_byte(4, 3),  # a version this code does not know
        _set_byte(4, 0),
        _set_byte(5, MAX_COST + 1),  # scrypt cost beyond the ceiling
        _set_byte(5, 0),
        _set_byte(6, 0),  # threshold 0
        _set_byte(6, 5),  # threshold above the 4 shares
        _set_byte(7, 0),  # no properties
        _set_byte(7, 4),  # more properties than present
    ],
)
def test_bad_fields_are_malformed_even_with_a_good_checksum(edit: Edit) -> None:
    forged = rechecksummed(edit(reference_blob()))
    with pytest.raises(MalformedBinding):
        describe(forged)
    with pytest.raises(MalformedBinding):
        unbind(forged, TAMPER_MACHINE)


def test_duplicate_bound_names_are_malformed() -> None:
    blob = bind(os.urandom(8), [prop("a", b"1", 1), prop("b", b"2", 1)], 0.5, test_cost=TINY)
    data = bytearray(blob)
    second = fuzzy._HEADER.size + 3 + 8  # first record: len, "a", weight, encrypted share
    assert data[second : second + 2] == b"\x01b"
    data[second + 1] = ord("a")
    with pytest.raises(MalformedBinding):
        describe(rechecksummed(bytes(data)))


@pytest.mark.parametrize("junk", [b"", b"LCFB", b"LCFB\x01" + bytes(100), "LCFB"])
def test_junk_is_malformed(junk: bytes) -> None:
    with pytest.raises(MalformedBinding):
        unbind(junk, TAMPER_MACHINE)


def test_malformed_says_nothing_about_what_was_wrong() -> None:
    blob = reference_blob()
    messages = set()
    for forged in (b"", blob[:-1], b"XXXX" + blob[4:], blob + b"\x00", flipped(blob, 40, 0)):
        with pytest.raises(MalformedBinding) as caught:
            unbind(forged, TAMPER_MACHINE)
        assert isinstance(caught.value, ValueError)
        assert caught.value.code is ErrorCode.LICENSE_INVALID
        messages.add(str(caught.value))
    assert len(messages) == 1


def test_the_layout_is_the_documented_one() -> None:
    secret = os.urandom(32)
    blob = bind(secret, [prop("mac", b"52:54", 2)], 1.0, test_cost=COST)
    magic, version, cost, threshold, count, length = struct.unpack_from(">4sBBBBH", blob)
    assert (magic, version, cost, threshold, count, length) == (b"LCFB", 2, COST, 2, 1, 32)
    # header 42 + record (1 + 3 + 1 + 2*32, no nonce, no tag) + checksum 16
    assert len(blob) == 42 + 69 + 16
    assert blob[42:47] == b"\x03mac\x02"
    assert blob[-16:] == hashlib.sha256(fuzzy._CHECKSUM_LABEL_V2 + blob[:-16]).digest()[:16]


# -- refusals at binding time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "properties", "cost"),
    [
        (b"", MACHINE, COST),  # empty secret
        (bytes(65536), MACHINE, COST),  # too long
        (b"k" * 32, [prop("a", b"1", 0)], COST),  # no weight
        (b"k" * 32, [], COST),
        (b"k" * 32, [prop("a", b"1", 2), prop("a", b"2", 1)], COST),  # duplicate names
        (b"k" * 32, [prop("a", b"1", 2), prop("a", b"2", 0)], COST),
        (b"k" * 32, [prop("", b"1", 2)], COST),
        (b"k" * 32, [prop("a", b"1", -1)], COST),
        (b"k" * 32, [prop("a", b"1", 256)], COST),
        (b"k" * 32, [prop(f"p{i}", b"1", 200) for i in range(2)], COST),  # 400 shares
        (b"k" * 32, [prop("n" * 256, b"1", 1)], COST),
        (b"k" * 32, MACHINE, MAX_COST + 1),
        (b"k" * 32, MACHINE, 3),
    ],
)
def test_bind_refuses_bad_input(
    secret: bytes, properties: list[MachineProperty], cost: int
) -> None:
    with pytest.raises(ValueError):
        bind(secret, properties, 0.5, test_cost=cost)


@pytest.mark.parametrize("cost", [4, 8, fuzzy.FLOOR_COST - 1])
def test_the_shipped_cost_has_a_floor(cost: int) -> None:
    """Only a test's `test_cost` goes under FLOOR_COST; `cost` never does."""
    with pytest.raises(ValueError, match="between 13"):
        bind(b"k" * 32, MACHINE, 0.5, cost=cost)
    assert describe(bind(b"k" * 32, MACHINE[:1], 0.5, test_cost=cost)).cost == cost


# -- no per-property oracle ----------------------------------------------------------------


def bind_v1(secret: bytes, properties: list[MachineProperty], fraction: float, cost: int) -> bytes:
    """The version 1 format as licentia wrote it: one AES-GCM seal per property."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from licentia.crypto import shamir

    bound = [p for p in properties if p.weight > 0]
    total = sum(p.weight for p in bound)
    threshold = threshold_for(total, fraction)
    salt = os.urandom(16)
    header = fuzzy._HEADER.pack(
        fuzzy.MAGIC, 1, cost, threshold, len(bound), len(secret), salt, fuzzy._commit(secret, salt)
    )
    shares = shamir.split(secret, threshold, total)
    out = bytearray(header)
    first_x = 1
    for p in bound:
        name = p.name.encode()
        prefix = bytes([len(name)]) + name + bytes([p.weight])
        plaintext = b"".join(y for _, y in shares[first_x - 1 : first_x - 1 + p.weight])
        nonce = os.urandom(12)
        key = fuzzy._derive(p.value, salt, name, cost)
        out += prefix + nonce + AESGCM(key).encrypt(nonce, plaintext, fuzzy._aad(header, prefix, first_x))
        first_x += p.weight
    out += fuzzy._checksum(bytes(out))
    return bytes(out)


def test_version_1_blobs_are_still_read() -> None:
    secret = os.urandom(32)
    blob = bind_v1(secret, MACHINE, 0.6, TINY)
    assert describe(blob).version == 1
    assert unbind(blob, MACHINE).secret == secret
    outcome = unbind(blob, [MACHINE[0], changed(MACHINE[1]), MACHINE[2], MACHINE[3]])
    assert outcome.secret == secret and outcome.changed == ("mac",)


def guess_outcome(blob: bytes, guess: MachineProperty, others: list[MachineProperty]) -> tuple[object, ...]:
    """All an attacker learns from trying one guess with the values they have of the rest."""
    result = outcome_of(blob, [guess, *others])
    if isinstance(result, BindingOutcome):
        return ("secret", result.secret)
    assert isinstance(result, BindingBroken)
    return ("broken", result.matched_weight, result.matched, result.changed, result.missing, str(result))


@pytest.mark.parametrize("version", [1, 2])
def test_a_guess_of_one_property_cannot_be_checked_alone(version: int) -> None:
    """The offline attack: a copied blob, the right value of one property and a wrong one,
    and what the attacker has of the others (all wrong, or absent). With version 1 the
    refusal said whether the guess opened its seal; with version 2 both refusals are the
    same, and the decrypted shares carry no tag to test."""
    secret = os.urandom(32)
    machine = [prop("cpu.count", b"16", 2), prop("memory", b"64", 2), prop("machine-id", b"a" * 32, 4),
               prop("net.mac.eth0", b"3c:ec:ef:12:34:56", 2)]
    blob = (bind_v1(secret, machine, 0.65, TINY) if version == 1
            else bind(secret, machine, 0.65, test_cost=TINY))
    right, wrong = machine[0], changed(machine[0], b"8")
    for others in ([changed(p) for p in machine[1:]], [], [machine[1], changed(machine[2])]):
        told_apart = guess_outcome(blob, right, others) != guess_outcome(blob, wrong, others)
        assert told_apart is (version == 1), others


@given(data=st.data())
@SOME
def test_below_the_threshold_no_guess_is_told_apart(data: st.DataObject) -> None:
    """Whatever the attacker holds short of a threshold, every value of one property gets
    the same answer (hypothesis over machines, thresholds and what is right)."""
    machine = data.draw(machines())
    bound = [p for p in machine if p.weight > 0]
    secret = os.urandom(16)
    fraction = data.draw(st.sampled_from([t.fraction for t in Tolerance]))
    blob = bind(secret, machine, fraction, test_cost=TINY)
    needed = threshold_for(sum(p.weight for p in bound), fraction)
    target = data.draw(st.sampled_from(bound))
    held = [p for p in bound if p is not target and data.draw(st.booleans())]
    if sum(p.weight for p in held) + target.weight >= needed:
        held = []  # with the target right the attacker would reach the threshold
    if target.weight >= needed:
        return  # one property alone carries the threshold: it decides by design
    others = held + [changed(p) for p in bound if p is not target and p not in held]
    assert guess_outcome(blob, target, others) == guess_outcome(blob, changed(target), others)


def test_unbind_refuses_duplicate_current_names() -> None:
    blob = reference_blob()
    with pytest.raises(ValueError) as caught:
        unbind(blob, [*TAMPER_MACHINE, prop("a", b"other", 1)])
    assert not isinstance(caught.value, MalformedBinding)


def test_a_full_share_table_binds() -> None:
    secret = os.urandom(32)
    props = [prop(f"p{i}", bytes([i]), 51) for i in range(5)]  # 255 shares
    blob = bind(secret, props, 0.4, test_cost=TINY)
    assert describe(blob).total_weight == 255
    assert unbind(blob, props[:2]).secret == secret  # 102 of 255, 102 needed
    with pytest.raises(BindingBroken):
        unbind(blob, props[:1])
