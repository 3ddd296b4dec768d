"""The checker of `bench/faults.py` can fail: its self-test feeds it observations with each
kind of violation (seats over the quantity by either view, a lost or doubled decrement, a
dead holder's seat kept past its deadline, a handle given twice) and ones within the rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FAULTS = Path(__file__).resolve().parents[2] / "bench" / "faults.py"


def test_the_fault_checker_reports_every_kind_of_violation_and_nothing_else() -> None:
    done = subprocess.run([sys.executable, str(FAULTS), "--self-test"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 of 11 cases as expected" in done.stdout
