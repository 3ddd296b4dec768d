"""The tolerance scenarios through the real fuzzy binding: bind a secret to the machine
before, unbind with the machine after. The arithmetic in licentia.binding must predict
exactly what licentia.crypto.fuzzy does."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from tests.binding.scenarios import SCENARIOS, Scenario
from tests.machines import build

from licentia.binding import collect_fingerprint, match_weight, required_weight
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
