"""describe_machine: JSON-able, complete, and never shows a raw value."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.machines import Machine, kvm_guest, workstation

from licentia.binding import collect_fingerprint, describe_machine

MakeTree = Callable[[Machine], Path]


def test_describe_is_json_and_hides_values(make_tree: MakeTree) -> None:
    root = make_tree(workstation())
    info = describe_machine(root, {"SSH_CONNECTION": "10.0.0.5 1 10.0.0.9 22"})
    text = json.dumps(info)
    assert json.loads(text) == info
    fp = collect_fingerprint(root, environ={})
    for prop in fp.properties:
        if len(prop.value) > 3:  # not a number that may stand anywhere in the JSON
            assert prop.value.decode() not in text, prop.name
    assert info["environment"] == {
        "kind": "bare metal",
        "hypervisor": None,
        "container": None,
        "session": "remote desktop",
        "session_id": "",
    }
    assert info["recipe"] == "bare-metal"
    assert info["level"] == "strong"
    assert info["strength"].startswith("strong:")
    assert info["total_weight"] == 31
    assert info["needed_weight"] == {"loose": 13, "medium": 21, "strict": 27}
    # the cheapest unique properties to guess beyond the machine type: a DMI serial (20
    # bits) at loose; more serials, the DMI UUID, NICs and the disk further up
    assert info["strength_bits"] == {"loose": 20, "medium": 76, "strict": 164}
    names = [p["name"] for p in info["properties"]]
    assert names == [p.name for p in fp.properties]
    for entry in info["properties"]:
        assert set(entry) == {"name", "weight", "stability", "hash"}
        assert len(entry["hash"]) == 12 and int(entry["hash"], 16) >= 0


def test_hashes_compare_machines(make_tree: MakeTree) -> None:
    a = describe_machine(make_tree(workstation()), {})
    b = describe_machine(make_tree(workstation()), {})
    c = describe_machine(make_tree(kvm_guest()), {})
    assert a["properties"] == b["properties"]
    hashes_a = {p["name"]: p["hash"] for p in a["properties"]}
    hashes_c = {p["name"]: p["hash"] for p in c["properties"]}
    assert hashes_a["machine-id"] != hashes_c["machine-id"]
    assert c["environment"]["kind"] == "virtual machine"
    assert c["environment"]["hypervisor"] == "kvm"
    assert c["recipe"] == "virtual-machine"
