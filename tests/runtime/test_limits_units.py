"""The pure parts of the runtime's limits: the nesting bound and the handles' marks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from licentia.model import ErrorCode, LicentiaError
from licentia.runtime.handles import BLOCK, HandleMarks
from licentia.runtime.limits import too_deep

values = st.recursive(st.integers() | st.text(max_size=3) | st.binary(max_size=3),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
                      max_leaves=30)


@given(values, st.integers(min_value=0, max_value=8))
def test_too_deep_says_whether_the_nesting_passes_the_bound(value: Any, bound: int) -> None:
    assert too_deep(value, bound) == (_deepest_item(value) > bound)


def _deepest_item(v: Any, d: int = 0) -> int:
    """The level of the deepest value (the top value at level 0)."""
    if isinstance(v, dict):
        return max([d] + [_deepest_item(x, d + 1) for x in v.values()])
    if isinstance(v, list):
        return max([d] + [_deepest_item(x, d + 1) for x in v])
    return d


def test_a_thousand_levels_are_too_deep_without_recursion() -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value]
    assert too_deep(value)


@given(st.lists(st.integers(min_value=1, max_value=3 * BLOCK), min_size=1, max_size=6))
def test_handle_marks_only_grow_and_a_restart_starts_above_them(tmp_path_factory: pytest.TempPathFactory,
                                                                 snapshot_nexts: list[int]) -> None:
    path = tmp_path_factory.mktemp("marks") / "handles"
    given_up_to = 0
    for nxt in snapshot_nexts:  # each a restart whose snapshot says `nxt`, however old it is
        marks = HandleMarks(path)
        marks.load()
        first, _ = marks.start(nxt, 1 << 40)
        assert first > given_up_to
        assert first >= nxt
        ceiling = marks.local
        given_up_to = ceiling - 1  # the worst case: every handle of the block was given
        ceiling = marks.reserve_local(ceiling)
        given_up_to = ceiling - 1


def test_damaged_handle_marks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "handles"
    path.write_text("{not json")
    with pytest.raises(LicentiaError) as caught:
        HandleMarks(path).load()
    assert caught.value.code == ErrorCode.WRONG_CONTENT
