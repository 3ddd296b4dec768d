"""The `licentia` command reading another machine, for tests: a test-only entry point.

    python tests/machine_cli.py MACHINE_ROOT [licentia arguments ...]

runs `licentia.cli.main.main(arguments, machine_root=MACHINE_ROOT)`: the command reads its
fingerprint from a synthetic machine tree (tests/machines.py) instead of "/", and makes
soft containers at the tests' scrypt cost (tests/binding_cost.py). The shipped
`licentia` command has neither switch and reads no environment variable for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

PATH = Path(__file__)


def command(machine_root: Path) -> list[str]:
    """The argv prefix that runs `licentia` on `machine_root` in a subprocess."""
    return [sys.executable, str(PATH), str(machine_root)]


if __name__ == "__main__":
    import binding_cost
    from licentia.cli.main import main

    binding_cost.install()
    sys.exit(main(sys.argv[2:], machine_root=Path(sys.argv[1])))
