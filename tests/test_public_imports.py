"""scripts/check_public_imports.py: the sources import no private module of another package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_public_imports.py"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_the_sources_import_public_modules_only() -> None:
    done = _check()
    assert done.returncode == 0, done.stdout


def test_a_private_import_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "import os\nimport _socket\nfrom licentia.binding._fs import Tree\n"
        "def f():\n    from cryptography.hazmat.bindings import _rust\n"
        "if TYPE_CHECKING:\n    import _thread\n")
    done = _check(str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [f"{tmp_path / 'a.py'}:2: _socket",
                                        f"{tmp_path / 'a.py'}:5: cryptography.hazmat.bindings._rust"]
