"""The guard against compiled modules that are older than their sources (licentia.native)."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import pytest

from licentia import native
from licentia.model import ErrorCode, LicentiaError

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A licentia package of one compiled module, built from the source as it is now."""
    pkg = tmp_path / "licentia"
    (pkg / "core").mkdir(parents=True)
    src = pkg / "core" / "seats.py"
    src.write_text("X = 1\n")
    (pkg / "core" / f"seats{SUFFIX}").write_bytes(b"\x7fELF compiled")
    (pkg / f"_native__mypyc{SUFFIX}").write_bytes(b"\x7fELF shared")
    manifest = pkg / "_native.json"
    manifest.write_text(json.dumps({"sources": {"licentia.core.seats": hashlib.sha256(src.read_bytes()).hexdigest()},
                                    "suffix": SUFFIX}))
    monkeypatch.setattr(native, "_PACKAGE", pkg)
    monkeypatch.setattr(native, "MANIFEST", manifest)
    return pkg


def test_a_build_of_the_current_sources_is_in_step(tree: Path) -> None:
    assert native.compiled() == {"licentia.core.seats": hashlib.sha256(b"X = 1\n").hexdigest()}
    assert native.stale() == []
    native.check()


def test_an_edited_source_is_refused_until_rebuilt(tree: Path) -> None:
    (tree / "core" / "seats.py").write_text("X = 2\n")
    assert native.stale() == [f"licentia.core.seats: seats.py changed after seats{SUFFIX} was built"]
    with pytest.raises(LicentiaError) as info:
        native.check()
    assert info.value.code is ErrorCode.INTERNAL
    assert "make native" in str(info.value)


def test_an_extension_the_manifest_does_not_vouch_for_is_refused(tree: Path) -> None:
    (tree / "core" / "other.py").write_text("Y = 1\n")
    (tree / "core" / f"other{SUFFIX}").write_bytes(b"\x7fELF")
    assert native.stale() == [f"licentia.core.other: other{SUFFIX} is not in _native.json"]
    (tree / "_native.json").unlink()  # no manifest: nothing is vouched for
    assert native.compiled() == {}
    assert len(native.stale()) == 2


def test_the_running_tree_is_in_step() -> None:
    # what the test session itself runs (checked at its start too, see conftest.py)
    assert native.stale() == []
