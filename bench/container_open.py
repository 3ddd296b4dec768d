"""What opening a soft container and judging an item costs, next to floors measured in the same run.

Rows:
- bare `python -c pass` (the floor for any fresh process);
- a fresh process that imports cryptography and verifies one Ed25519 signature;
- a fresh process that opens a soft container on this machine and evaluates an item
  (default binding cost, and a cheap cost for comparison);
- warm, in one process: one Ed25519 verify; re-reading an opened container and evaluating
  an item (what the runtime pays per look-up); a full open with the key rebuilt.

Run: .venv/bin/python bench/container_open.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from licentia.binding import collect_fingerprint
from licentia.containers.soft import SoftContainer
from licentia.core import updates as U
from licentia.core.content import ContainerContent
from licentia.core.evaluate import evaluate
from licentia.crypto import fuzzy, new_signing_key, sign, signing_public_key, verify
from licentia.model import ItemRequest, ProductItem, Tolerance

FIRM = 10_001


def make_container(directory: Path, cost: int) -> SoftContainer:
    """A container at the shipped cost, or (for comparison) at a lower one, which only the
    tests' view of the crypto recipe reaches (tests/binding_cost.py)."""
    fp = collect_fingerprint(Path("/"), environ=os.environ)
    if cost == fuzzy.DEFAULT_COST:
        c = SoftContainer.create(directory, fp, Tolerance.MEDIUM, int(time.time()))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests import binding_cost

        binding_cost.install(cost)
        try:
            c = SoftContainer.create(directory, fp, Tolerance.MEDIUM, int(time.time()))
        finally:
            binding_cost.uninstall()
    key = new_signing_key()

    def change(content: ContainerContent) -> tuple[ContainerContent, None]:
        req = U.read_request(U.make_request(content, FIRM, int(time.time()), {}))
        up = U.issue_update(req, FIRM, key, [U.PutItem(1, ProductItem(product_code=7, units=10))], int(time.time()))
        return U.apply_update(content, up, int(time.time()), in_vm=False).content, None

    c.transact(change)
    return c


CHILD_OPEN = """
import os, sys, time
from pathlib import Path
from licentia.binding import collect_fingerprint
from licentia.containers.soft import SoftContainer
from licentia.core.evaluate import evaluate
from licentia.model import ItemRequest
c = SoftContainer.open(Path(sys.argv[1]), collect_fingerprint(Path("/"), environ=os.environ))
content = c.read()
e = content.find(10001, 7)[0]
assert evaluate(e.item, e.state, ItemRequest(), content.clock, int(time.time())).ok
"""

CHILD_VERIFY = """
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
k = Ed25519PrivateKey.generate(); s = k.sign(b"x"); k.public_key().verify(s, b"x")
"""


def time_process(args: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(args, check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def time_warm(fn: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    py = sys.executable
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        default_c = make_container(Path(tmp) / "default", fuzzy.DEFAULT_COST)
        cheap_c = make_container(Path(tmp) / "cheap", 8)
        rows.append(("fresh: python -c pass (floor)", time_process([py, "-c", "pass"], args.repeat)))
        rows.append(("fresh: import cryptography + Ed25519 verify", time_process([py, "-c", CHILD_VERIFY], args.repeat)))
        rows.append((f"fresh: open container (cost {fuzzy.DEFAULT_COST}) + evaluate", time_process([py, "-c", CHILD_OPEN, str(default_c.path)], args.repeat)))
        rows.append(("fresh: open container (cost 8) + evaluate", time_process([py, "-c", CHILD_OPEN, str(cheap_c.path)], args.repeat)))

        priv = new_signing_key()
        pub, sig = signing_public_key(priv), sign(priv, b"x")
        rows.append(("warm: one Ed25519 verify (floor)", time_warm(lambda: verify(pub, b"x", sig), 200)))

        def lookup() -> None:
            content = default_c.read()
            e = content.find(FIRM, 7)[0]
            assert evaluate(e.item, e.state, ItemRequest(), content.clock, int(time.time())).ok

        rows.append(("warm: re-read opened container + evaluate", time_warm(lookup, 200)))
        fp = collect_fingerprint(Path("/"), environ=os.environ)
        rows.append((f"warm: full open (cost {fuzzy.DEFAULT_COST}, key rebuilt)", time_warm(lambda: SoftContainer.open(default_c.path, fp), args.repeat)))
        rows.append(("warm: full open (cost 8, key rebuilt)", time_warm(lambda: SoftContainer.open(cheap_c.path, fp), args.repeat)))

    floor = rows[0][1]
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'median':>10}  vs python -c pass")
    for name, seconds in rows:
        ratio = f"{seconds / floor:6.2f}x" if name.startswith("fresh") else ""
        print(f"{name:<{width}}  {seconds * 1000:8.3f}ms  {ratio}")


if __name__ == "__main__":
    main()
