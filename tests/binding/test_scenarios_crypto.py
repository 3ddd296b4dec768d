"""The tolerance scenarios through the real fuzzy binding: bind a secret to the machine
before, unbind with the machine after. The arithmetic in licentia.binding must predict
exactly what licentia.crypto.fuzzy does."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from tests.binding.scenarios import SCENARIOS, Scenario
from tests.machines import build

from licentia.binding import (
    RECIPES,
    VM_RECIPE,
    Reading,
    apply_recipe,
    collect_fingerprint,
    match_weight,
    required_weight,
)
from licentia.binding.recipes import is_unique
from licentia.model import MachineProperty, Tolerance

if importlib.util.find_spec("licentia.crypto.fuzzy") is None:  # pragma: no cover
    pytest.skip(
        "licentia.crypto.fuzzy (bind/unbind) is not in this tree yet", allow_module_level=True
    )

from licentia.crypto.fuzzy import BindingBroken, bind, threshold_for, unbind

COST = 8  # small scrypt cost for tests; production uses the module default


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_with_real_binding(scenario: Scenario, tmp_path: Path) -> None:
    before = collect_fingerprint(build(scenario.before(), tmp_path / "before"), environ={})
    after = collect_fingerprint(build(scenario.after(), tmp_path / "after"), environ={})
    matched, total = match_weight(before.properties, after.properties)
    for tolerance in Tolerance:
        secret = os.urandom(32)
        blob = bind(secret, before.properties, tolerance.fraction, test_cost=COST)
        if scenario.expected(tolerance):
            outcome = unbind(blob, after.properties)
            assert outcome.secret == secret
            assert (outcome.matched_weight, outcome.total_weight) == (matched, total)
            assert outcome.needed_weight == required_weight(total, tolerance)
        else:
            with pytest.raises(BindingBroken) as broken:
                unbind(blob, after.properties)
            # which properties changed is not told (no per-property oracle)
            assert broken.value.matched_weight is None and broken.value.matched == ()
            assert broken.value.needed_weight == required_weight(total, tolerance)


@given(
    st.integers(min_value=1, max_value=255),
    st.sampled_from([t.fraction for t in Tolerance] + [0.0, 0.5, 0.33, 0.999, 1.0]),
)
def test_required_weight_is_the_crypto_threshold(total: int, fraction: float) -> None:
    assert required_weight(total, fraction) == threshold_for(total, fraction)


def test_collected_properties_are_bindable_on_this_machine() -> None:
    """The real machine's fingerprint goes through bind/unbind unchanged."""
    fp = collect_fingerprint(Path("/"))
    props: tuple[MachineProperty, ...] = fp.properties
    if sum(p.weight for p in props) == 0:
        pytest.skip("this machine shows no bindable property")
    blob = bind(b"k" * 16, props, Tolerance.STRICT.fraction, test_cost=COST)
    assert unbind(blob, collect_fingerprint(Path("/")).properties).secret == b"k" * 16


KINDS = sorted(VM_RECIPE.weights)


@st.composite
def weighed_machines(draw: st.DrawFn) -> tuple[tuple[MachineProperty, ...], Tolerance]:
    """A machine of random readable kinds (up to 3 NICs), weighed by a random recipe."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=12, unique=True))
    nics = draw(st.integers(0, 3))
    readings = [Reading(k, k, b"value of " + k.encode(), "x") for k in kinds if k != "net.mac"]
    readings += [Reading(f"net.mac.eth{i}", "net.mac", b"52:54:00:00:00:%02x" % i, "x", draw(st.booleans()))
                 for i in range(nics)]
    recipe = draw(st.sampled_from(list(RECIPES.values())))
    return apply_recipe(readings, recipe), draw(st.sampled_from(list(Tolerance)))


@settings(max_examples=40, deadline=None)
@given(weighed_machines(), st.data())
def test_the_machine_type_and_too_few_unique_properties_never_rebuild_the_key(
    machine: tuple[tuple[MachineProperty, ...], Tolerance], data: st.DataObject
) -> None:
    """The attacker has every shared property right (they know the machine type) and some of
    the unique ones: the key comes back iff those carry the threshold, and with fewer than
    the threshold's worth of unique properties it never does."""
    props, tolerance = machine
    bound = [p for p in props if p.weight > 0]
    if not bound:
        return  # nothing unique readable: nothing is bound (and creating a container refuses)
    secret = os.urandom(32)
    blob = bind(secret, bound, tolerance.fraction, test_cost=4)
    total = sum(p.weight for p in bound)
    needed = required_weight(total, tolerance)
    shared = [p for p in bound if not is_unique(p.name)]
    unique = [p for p in bound if is_unique(p.name)]
    right = [p for p in unique if data.draw(st.booleans())]
    guess = shared + right + [MachineProperty(p.name, p.value + b"?", p.weight) for p in unique if p not in right]
    matched = sum(p.weight for p in shared + right)
    assert sum(p.weight for p in shared) < needed  # the machine type alone: never
    if matched >= needed:
        assert unbind(blob, guess).secret == secret
    else:
        with pytest.raises(BindingBroken):
            unbind(blob, guess)
