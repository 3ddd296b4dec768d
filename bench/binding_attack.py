"""What guessing a copied soft container's binding costs an attacker, at the shipped cost.

    .venv/bin/python bench/binding_attack.py

Measures one scrypt derivation at `fuzzy.DEFAULT_COST` (one guessed value of one
property) and one candidate check (an interpolation at 0 of t shares and the HMAC the
commitment is), then prints, for this machine and the synthetic machines of the tests,
per tolerance: the bits the attacker must guess (`strength_bits`: the cheapest unique
properties beyond what the machine type shares), how many derivations and joint checks
that takes, and the CPU time on one core of this machine. docs/binding-crypto.md holds a
run of it.
"""

from __future__ import annotations

import hmac
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.machines import build, kvm_guest, no_dmi_machine, workstation

from licentia.binding import collect_fingerprint
from licentia.binding.match import required_weight
from licentia.binding.recipes import GUESS_BITS, is_unique, strength_bits
from licentia.crypto import fuzzy, shamir
from licentia.model import MachineProperty, Tolerance

YEAR = 365.25 * 86400


def scrypt_seconds() -> float:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    runs = []
    for i in range(7):
        start = time.perf_counter()
        Scrypt(salt=os.urandom(20), length=32, n=2**fuzzy.DEFAULT_COST, r=8, p=1).derive(b"guess %d" % i)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def check_seconds(threshold: int) -> float:
    shares = shamir.split(os.urandom(32), threshold, threshold)
    table = shamir.ShareTable(shares)
    indices = list(range(threshold))
    message = os.urandom(200)
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        hmac.digest(table.secret(indices), message, "sha256")
    return (time.perf_counter() - start) / rounds


def cheapest(props: list[MachineProperty], tolerance: Tolerance) -> list[int]:
    """The GUESS_BITS of the unique properties an attacker guesses (the cheapest set)."""
    bound = [p for p in props if p.weight > 0]
    total = sum(p.weight for p in bound)
    needed = required_weight(total, tolerance) - sum(p.weight for p in bound if not is_unique(p.name))
    unique = [p for p in bound if is_unique(p.name)]
    best: list[int] | None = None
    for mask in range(1, 1 << len(unique)):
        chosen = [unique[i] for i in range(len(unique)) if mask >> i & 1]
        if sum(p.weight for p in chosen) < needed:
            continue
        bits = [GUESS_BITS["net.mac" if p.name.startswith("net.mac.") else p.name] for p in chosen]
        if best is None or sum(bits) < sum(best):
            best = bits
    return best or []


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    if seconds < 2 * YEAR:
        return f"{seconds / 86400:.3g} days"
    years = seconds / YEAR
    return f"{years:.3g} years" if years < 1e6 else f"2^{math.log2(years):.0f} years"


def main() -> None:
    derive = scrypt_seconds()
    print(f"one scrypt derivation at cost {fuzzy.DEFAULT_COST}: {derive * 1000:.1f} ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        machines = [("this machine", collect_fingerprint(Path("/"), environ={}))]
        for name, make in (("workstation", workstation), ("KVM guest", kvm_guest), ("no DMI", no_dmi_machine)):
            machines.append((f"synthetic {name}", collect_fingerprint(build(make(), Path(tmp) / name), environ={})))
        print("| machine | tolerance | bits | values derived | joint checks | CPU time (one core) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, fp in machines:
            props = list(fp.properties)
            total = sum(p.weight for p in props if p.weight > 0)
            for tolerance in Tolerance:
                bits = cheapest(props, tolerance)
                assert sum(bits) == strength_bits(props, tolerance)
                check = check_seconds(required_weight(total, tolerance))
                derivations = sum(2.0**b for b in bits)
                joint = 2.0 ** sum(bits)
                seconds = derivations * derive + joint * check
                print(f"| {name} | {tolerance.value} | {sum(bits)} | 2^{math.log2(derivations):.1f} "
                      f"| 2^{sum(bits)} | {human(seconds)} |")


if __name__ == "__main__":
    main()
