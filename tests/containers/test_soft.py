"""Soft containers on a real file system: binding, tampering, updates, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from licentia.containers.operations import spend_units, use_item
from licentia.containers.soft import SoftContainer
from licentia.containers.store import ContainerStore
from licentia.core import updates as U
from licentia.core.content import ContainerContent
from licentia.crypto import new_signing_key
from licentia.model import (
    ContainerStatus,
    Environment,
    ErrorCode,
    Fingerprint,
    ItemRequest,
    LicentiaError,
    MachineProperty,
    ProductItem,
    Tolerance,
)

FIRM = 10_001
FIRM_KEY = new_signing_key()


def machine(**values: str) -> Fingerprint:
    base = {"machine-id": "a" * 32, "dmi-uuid": "u-1", "cpu": "xeon", "nic:eth0": "02:00:00:00:00:01",
            "disk": "wd-123", "hostname": "host1"}
    base.update(values)
    weights = {"machine-id": 3, "dmi-uuid": 3, "cpu": 2, "nic:eth0": 2, "disk": 2, "hostname": 1}
    return Fingerprint(
        tuple(MachineProperty(k, v.encode(), weights.get(k, 1)) for k, v in base.items()),
        Environment(),
    )


def now() -> int:
    return int(time.time())


def add_item(container: SoftContainer, item: ProductItem, item_id: int = 1) -> U.Applied:
    def change(c: ContainerContent) -> tuple[ContainerContent, U.Applied]:
        request = U.read_request(U.make_request(c, FIRM, now(), {}))
        applied = U.apply_update(c, U.issue_update(request, FIRM, FIRM_KEY, [U.PutItem(item_id, item)], now()), now(), in_vm=False)
        return applied.content, applied

    return container.transact(change)


@pytest.fixture
def store(tmp_path: Path) -> ContainerStore:
    return ContainerStore(tmp_path / "containers", machine())


def test_create_open_and_use(store: ContainerStore) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    assert c.serial.mask == 130
    add_item(c, ProductItem(product_code=7, units=3))
    again = store.open(c.serial)
    entry = use_item(again, FIRM, 7, ItemRequest(), now())
    assert entry.item.product_code == 7
    assert spend_units(again, FIRM, entry.item_id, 2, now()) == 1
    assert store.open(c.serial).read().find(FIRM, 7)[0].state.units_remaining == 1


def test_copied_to_another_machine_is_broken_at_medium(store: ContainerStore, tmp_path: Path) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    other = ContainerStore(store.directory, machine(**{"machine-id": "b" * 32, "dmi-uuid": "u-2", "disk": "x", "hostname": "h2"}))
    with pytest.raises(LicentiaError) as e:
        other.open(c.serial)
    assert e.value.code is ErrorCode.REACTIVATION_REQUIRED
    assert "broken" in e.value.message
    assert other.inspect(c.path, now()).status is ContainerStatus.BROKEN


def test_one_changed_property_still_opens_at_medium(store: ContainerStore) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    changed = ContainerStore(store.directory, machine(**{"nic:eth0": "02:00:00:00:00:99"}))
    opened = changed.open(c.serial)
    assert "nic:eth0" in opened.health.missing


def test_every_flipped_byte_is_invalid_or_broken_never_opened(store: ContainerStore) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    add_item(c, ProductItem(product_code=7))
    data = c.path.read_bytes()
    rng = random.Random(1)
    positions = [*sorted(rng.sample(range(len(data)), 60)), 0, len(data) - 1]
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        c.path.write_bytes(bytes(bad))
        r = store.inspect(c.path, now())
        assert r.status is ContainerStatus.INVALID, (pos, r)
    c.path.write_bytes(data)
    assert store.inspect(c.path, now()).status is ContainerStatus.OK


def test_clock_set_back_is_detected_and_reported(store: ContainerStore) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    add_item(c, ProductItem(product_code=7, expires_at=now() + 10 * 86400))
    future = now() + 86400
    c.observe_clock(future)
    with pytest.raises(LicentiaError) as e:
        use_item(c, FIRM, 7, ItemRequest(), now())
    assert e.value.code is ErrorCode.CLOCK_MANIPULATED
    assert store.inspect(c.path, now()).status is ContainerStatus.CLOCK_MANIPULATED


def test_truncated_and_foreign_files_are_invalid(store: ContainerStore) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    data = c.path.read_bytes()
    c.path.write_bytes(data[:-1])
    assert store.inspect(c.path, now()).status is ContainerStatus.INVALID
    c.path.write_bytes(b"not a container")
    assert store.inspect(c.path, now()).status is ContainerStatus.INVALID


# -- crash safety: SIGKILL at random points, real processes --------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from licentia.model import Fingerprint, MachineProperty, Environment
    from licentia.containers.soft import SoftContainer
    from licentia.containers.operations import spend_units
    from licentia.core import updates as U

    spec = json.loads(Path(sys.argv[1]).read_text())
    fp = Fingerprint(tuple(MachineProperty(n, v.encode(), w) for n, v, w in spec["props"]), Environment())
    c = SoftContainer.open(Path(spec["path"]), fp)
    print("ready", flush=True)
    if spec["mode"] == "decrement":
        while True:
            spend_units(c, spec["firm"], 1, 1, int(time.time()))
    else:
        data = Path(spec["update"]).read_bytes()
        def change(content):
            applied = U.apply_update(content, data, int(time.time()), in_vm=False)
            return applied.content, applied
        c.transact(change)
        print("applied", flush=True)
    """
)


def _spawn(tmp_path: Path, spec: dict[str, object]) -> subprocess.Popen[str]:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(spec_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _props(fp: Fingerprint) -> list[list[object]]:
    return [[p.name, p.value.decode(), p.weight] for p in fp.properties]


@pytest.mark.slow
def test_sigkill_during_unit_decrements_leaves_a_whole_state(store: ContainerStore, tmp_path: Path) -> None:
    c = store.create_soft(Tolerance.MEDIUM, now())
    add_item(c, ProductItem(product_code=7, units=1_000_000))
    rng = random.Random(7)
    last = 1_000_000
    for _ in range(8):
        proc = _spawn(tmp_path, {"mode": "decrement", "path": str(c.path), "firm": FIRM, "props": _props(store.fingerprint)})
        time.sleep(rng.uniform(0.01, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        opened = store.open(c.serial)  # must open: old or new, never a torn file
        remaining = opened.read().find(FIRM, 7)[0].state.units_remaining
        assert remaining is not None and remaining <= last
        last = remaining
    assert last < 1_000_000
    leftovers = [p for p in c.path.parent.iterdir() if p.name.endswith(".tmp")]
    # A killed writer may leave its temp file; it never replaces the container.
    for p in leftovers:
        os.unlink(p)


@pytest.mark.slow
def test_sigkill_during_update_apply_leaves_old_or_new(store: ContainerStore, tmp_path: Path) -> None:
    rng = random.Random(11)
    for i in range(8):
        c = store.create_soft(Tolerance.MEDIUM, now())
        content = c.read()
        request = U.read_request(U.make_request(content, FIRM, now(), {}))
        update = tmp_path / f"u{i}.lcup"
        update.write_bytes(U.issue_update(request, FIRM, FIRM_KEY, [U.PutItem(1, ProductItem(product_code=7))], now()))
        proc = _spawn(tmp_path, {"mode": "apply", "path": str(c.path), "update": str(update), "firm": FIRM, "props": _props(store.fingerprint)})
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = store.open(c.serial).read()
        firm = after.firms.get(FIRM)
        if firm is None:
            assert after.find(FIRM, 7) == []  # the old state
        else:
            assert firm.update_counter == 1 and len(after.find(FIRM, 7)) == 1  # the new state


def test_a_version_1_binding_is_rewritten_in_version_2_at_the_next_write(store: ContainerStore) -> None:
    import dataclasses

    from tests.crypto.test_fuzzy import bind_v1

    from licentia.containers import soft
    from licentia.crypto import fuzzy
    from licentia.fsutil import atomic_write

    made = store.create_soft(Tolerance.MEDIUM, now())
    bound = [p for p in store.fingerprint.properties if p.weight > 0]
    secret = made._secret
    old = dataclasses.replace(made.header, binding=bind_v1(secret, bound, Tolerance.MEDIUM.fraction, 4))
    atomic_write(made.path, soft._serialize(old, made.read(), made._key))  # as an older licentia wrote it

    # opened on the same machine with its host name changed (within the tolerance)
    renamed = ContainerStore(store.directory, machine(hostname="host2"))
    opened = renamed.open(made.serial)
    assert fuzzy.describe(opened.header.binding).version == 1
    add_item(opened, ProductItem(product_code=5, quantity=1))
    info = fuzzy.describe(opened.header.binding)
    assert info.version == 2 and info.cost == 4  # the tests' cost (tests/binding_cost.py)
    # bound anew to what still matched, never to the new host name
    assert "hostname" not in info.names and "machine-id" in info.names
    again = renamed.open(made.serial)
    assert fuzzy.describe(again.header.binding).version == 2
    assert again.read().find(FIRM, 5)
    # a moved copy still does not open
    with pytest.raises(LicentiaError) as caught:
        ContainerStore(store.directory, machine(**{"machine-id": "b" * 32, "dmi-uuid": "u-2", "disk": "x"})).open(
            made.serial)
    assert caught.value.code == ErrorCode.REACTIVATION_REQUIRED
