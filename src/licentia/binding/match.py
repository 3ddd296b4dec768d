"""The tolerance rule as exact integer arithmetic. Pure: no I/O.

A binding records properties with weights (W = the sum of the positive weights). On a
later check, a bound property *matches* when the current machine has a property of the
same name with the same value (the current weight does not matter). The binding holds
at a tolerance with fraction f when

    matched >= needed = max(1, ceil(f x W)),

f taken as the decimal it is written as (0.65 = 65/100), so 0.65 of 20 is exactly 13.
licentia.crypto.fuzzy uses the same rule to rebuild the key; these functions let the
binding layer say in advance what a change will do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from licentia.model import MachineProperty, Tolerance

__all__ = ["binding_holds", "match_weight", "required_weight"]


def match_weight(
    bound: Sequence[MachineProperty], current: Sequence[MachineProperty]
) -> tuple[int, int]:
    """(matched, total): the bound weight whose name and value are still present, and all of it.

    Properties of weight 0 are shown, not bound, and count for neither. Should `current`
    name a property twice, any of its values matches.
    """
    values: dict[str, set[bytes]] = {}
    for prop in current:
        values.setdefault(prop.name, set()).add(bytes(prop.value))
    matched = 0
    total = 0
    for prop in bound:
        if prop.weight <= 0:
            continue
        total += prop.weight
        if bytes(prop.value) in values.get(prop.name, ()):
            matched += prop.weight
    return matched, total


def _fraction_of(tolerance: Tolerance | float) -> Fraction:
    value = tolerance.fraction if isinstance(tolerance, Tolerance) else tolerance
    exact = Fraction(repr(float(value)))
    if not 0 <= exact <= 1:
        raise ValueError(f"a tolerance fraction lies between 0 and 1, got {value!r}")
    return exact


def required_weight(total: int, tolerance: Tolerance | float) -> int:
    """Weight that must still match out of `total`: max(1, ceil(fraction x total)); 0 if total is 0."""
    if total < 0:
        raise ValueError("total weight cannot be negative")
    if total == 0:
        return 0
    return max(1, math.ceil(_fraction_of(tolerance) * total))


def binding_holds(
    bound: Sequence[MachineProperty],
    current: Sequence[MachineProperty],
    tolerance: Tolerance | float,
) -> bool:
    """True when enough of the bound weight still matches at this tolerance (never for W = 0)."""
    matched, total = match_weight(bound, current)
    return total > 0 and matched >= required_weight(total, tolerance)
