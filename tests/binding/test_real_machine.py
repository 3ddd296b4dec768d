"""The collectors on the machine the tests run on: no crash, at least one property."""

from __future__ import annotations

import json
from pathlib import Path

from licentia.binding import collect_fingerprint, describe_machine
from licentia.model import MachineKind


def test_real_machine() -> None:
    fp = collect_fingerprint(Path("/"), environ={})
    assert len(fp.properties) >= 1
    assert isinstance(fp.environment.kind, MachineKind)
    assert fp.strength.split(":")[0] in {"strong", "fair", "weak"}
    info = describe_machine(Path("/"), {})
    json.dumps(info)
    assert info["properties"]
