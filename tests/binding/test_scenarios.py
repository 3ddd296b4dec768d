"""The tolerance scenarios on synthetic machines, decided by the pure match arithmetic.

The same scenarios run through the real fuzzy binding in test_scenarios_crypto.py, and
the table in docs/binding.md is checked against what is measured here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.binding.scenarios import SCENARIOS, Outcome, Scenario, render_table
from tests.machines import build

from licentia.binding import (
    binding_holds,
    collect_fingerprint,
    inspect_machine,
    match_weight,
    required_weight,
)
from licentia.model import Tolerance

DOCS = Path(__file__).resolve().parents[2] / "docs" / "binding.md"


def measure(scenario: Scenario, tmp_path: Path) -> Outcome:
    before = inspect_machine(build(scenario.before(), tmp_path / "before"), environ={})
    after = collect_fingerprint(build(scenario.after(), tmp_path / "after"), environ={})
    matched, total = match_weight(before.fingerprint.properties, after.properties)
    needed = {t: required_weight(total, t) for t in Tolerance}
    return Outcome(scenario, before.recipe.name, matched, total, needed)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.parametrize("tolerance", list(Tolerance), ids=[t.value for t in Tolerance])
def test_scenario(scenario: Scenario, tolerance: Tolerance, tmp_path: Path) -> None:
    outcome = measure(scenario, tmp_path)
    assert outcome.holds(tolerance) is scenario.expected(tolerance), (
        f"{scenario.name} at {tolerance.value}: {outcome.matched}/{outcome.total} matched, "
        f"{outcome.needed[tolerance]} needed"
    )
    before = collect_fingerprint(build(scenario.before(), tmp_path / "b2"), environ={})
    after = collect_fingerprint(build(scenario.after(), tmp_path / "a2"), environ={})
    assert binding_holds(before.properties, after.properties, tolerance) is scenario.expected(
        tolerance
    )


def test_no_dmi_binding_works_and_says_how_strong(tmp_path: Path) -> None:
    from tests.machines import no_dmi_machine, workstation

    with_dmi = collect_fingerprint(build(workstation(), tmp_path / "a"), environ={})
    without = collect_fingerprint(build(no_dmi_machine(), tmp_path / "b"), environ={})
    assert with_dmi.strength.startswith("strong:")
    assert without.strength.startswith("fair:")
    assert "no DMI identity" in without.strength
    assert sum(p.weight for p in without.properties) > 0


def test_docs_table_matches_measurements(tmp_path: Path) -> None:
    outcomes = [measure(s, tmp_path / f"s{i}") for i, s in enumerate(SCENARIOS)]
    table = render_table(outcomes)
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- scenario-table -->\n(.*?)\n<!-- /scenario-table -->", text, re.S)
    assert match, "docs/binding.md lacks the scenario table markers"
    assert match.group(1).strip() == table, "docs/binding.md scenario table is stale:\n" + table
