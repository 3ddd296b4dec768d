"""The firm key file is read with the C scanner `json` uses (so a program's start does not
load `json` and `re`): it must read what `json` reads, and refuse what it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from licentia.model import ErrorCode, LicentiaError
from licentia.sdk.verify import _json_loads, load_firm_key

KEY = bytes(range(32))

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(documents, st.sampled_from(["", " ", "\n", "\t\r\n "]), st.booleans())
def test_reads_what_json_writes(doc: Any, space: str, indent: bool) -> None:
    text = space + json.dumps(doc, indent=2 if indent else None) + space
    assert _json_loads(text) == json.loads(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('{}[]":,0123456789.eE-+ \n\tatrufnlsxNIy\\u')), max_size=24))
def test_refuses_what_json_refuses(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            _json_loads(text)
        return
    try:
        got = _json_loads(text)
    except ValueError:
        assert "NaN" in text or "Infinity" in text  # json's extension; a key file has no use for it
        return
    assert got == expected or (isinstance(expected, float) and math.isnan(expected))


@pytest.mark.parametrize("text", [
    "", "not json", '{"format": "licentia-firm-public-key", "public_key": "00"}',
    '{"format": "licentia-firm-public-key", "public_key": "' + KEY.hex() + '"} trailing',
    '{"format": "something-else", "public_key": "' + KEY.hex() + '"}',
    '{"format": "licentia-firm-public-key", "public_key": NaN}', "[1, 2]",
])
def test_a_malformed_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_text(text)
    with pytest.raises(LicentiaError) as e:
        load_firm_key(str(path), 10001)
    assert e.value.code is ErrorCode.INVALID_PARAMETER and "export-public" in e.value.hint


def test_an_exported_key_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "firm.pub"
    path.write_text(json.dumps({"format": "licentia-firm-public-key", "version": 1, "firm_code": 10001,
                                "name": "Ä", "public_key": KEY.hex()}, indent=2) + "\n")
    assert load_firm_key(path, 10001) == KEY
    assert load_firm_key(KEY.hex()) == KEY and load_firm_key(KEY) == KEY
    with pytest.raises(LicentiaError):
        load_firm_key(path, 10002)
    with pytest.raises(LicentiaError) as e:
        load_firm_key(tmp_path / "missing.pub", 10001)
    assert e.value.code is ErrorCode.INVALID_PARAMETER
