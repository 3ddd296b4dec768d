"""Compile the license path (seat table, usage log, connection, router, grants, proofs, identities) to C extensions
with mypyc.

The compiled modules are built from the very same Python sources, so there is no second
implementation to keep in step: without a C compiler, or when the build fails, licentia
runs the pure-Python modules and behaves the same, only slower. Compiling takes the
interpreter out of the per-request work of `licentia runtime serve` (docs/performance.md).

The extensions land next to their sources (src/licentia/.../NAME.cpython-*.so), where
Python imports them in preference to NAME.py. So that an edited source is never shadowed
by an older extension, `src/licentia/_native.json` records the SHA-256 of each source the
extensions were built from; this script rebuilds when one differs, and
`licentia.native.stale()` reports a difference to whoever imports the modules.

    python scripts/build_native.py           build when a source changed (fast when not)
    python scripts/build_native.py --remove  delete the extensions: pure Python again
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))  # licentia.native (standard library only) names the files
from licentia.native import MANIFEST, source_of  # noqa: E402

# the modules whose code runs on every access and release (see docs/performance.md)
MODULES = ("licentia.core.seats", "licentia.runtime.usagelog", "licentia.runtime.connection", "licentia.runtime.router",
           "licentia.runtime.grants", "licentia.runtime.events", "licentia.runtime.replies", "licentia.runtime.proofs",
           "licentia.runtime.ident")
GROUP = "licentia._native"  # the shared library of the group: src/licentia/_native__mypyc.*.so


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_files() -> list[Path]:
    """Every extension in the package: this script writes all there are (licentia has no
    other C extensions), for any Python version, including modules no longer compiled."""
    return sorted((SRC / "licentia").rglob("*.so"))


def remove() -> None:
    for path in built_files():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def up_to_date(wanted: dict[str, str]) -> bool:
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return False
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    expected = {source_of(m).with_name(source_of(m).stem + suffix) for m in MODULES}
    present = set(built_files())
    # every module built, and nothing else (a module dropped from MODULES leaves an extension)
    return recorded.get("sources") == wanted and recorded.get("suffix") == suffix and expected <= present and all(
        p in expected or p.name.startswith("_native__mypyc.") for p in present)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    paths = [str(source_of(m)) for m in MODULES]
    with tempfile.TemporaryDirectory(prefix="licentia-native-") as tmp:
        cwd = Path.cwd()
        os.chdir(tmp)  # away from pyproject.toml: this build is not the package's
        try:
            extensions = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=str(Path(tmp) / "c"))
            setup(name="licentia-native", ext_modules=extensions,
                  script_args=["-q", "build_ext", "--build-temp", str(Path(tmp) / "o"),
                               "--build-lib", str(Path(tmp) / "lib")])
        finally:
            os.chdir(cwd)
        lib = Path(tmp) / "lib"
        for built in lib.rglob("*.so"):
            rel = built.relative_to(lib)
            target = SRC / rel
            if not str(rel).startswith("licentia" + os.sep):
                raise RuntimeError(f"mypyc wrote {rel}, outside the licentia package")
            tmp_target = target.with_name(target.name + ".tmp")
            shutil.copyfile(built, tmp_target)
            tmp_target.replace(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remove", action="store_true", help="delete the compiled modules")
    args = parser.parse_args()
    if args.remove:
        remove()
        print("licentia: compiled modules removed; the pure-Python modules run")
        return 0
    wanted = {m: digest(source_of(m)) for m in MODULES}
    if up_to_date(wanted):
        return 0
    remove()  # never leave an extension that does not match its source
    try:
        build()
    except (Exception, SystemExit) as exc:  # no compiler, no headers, a mypyc error: Python still works
        remove()
        print(f"licentia: the compiled modules were not built ({exc}); the pure-Python modules run, "
              "slower (docs/performance.md)", file=sys.stderr)
        return 0
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    MANIFEST.write_text(json.dumps({"sources": wanted, "suffix": suffix}, indent=1) + "\n")
    print(f"licentia: compiled {', '.join(MODULES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
