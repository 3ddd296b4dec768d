"""Which of licentia's modules run compiled, and whether a compiled module is older than its source.

`scripts/build_native.py` compiles the license path with mypyc next to its sources and
records the SHA-256 of each source in `_native.json`. Python imports an extension in
preference to the .py beside it, so after an edit of a compiled module's source the old
code would run: `stale()` names such modules, and the runtime and the tests refuse to start
with them (rebuild with `make native`, or remove the extensions).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
MANIFEST = _PACKAGE / "_native.json"


def source_of(module: str) -> Path:
    """The .py file of a licentia module."""
    parts = module.split(".")
    if parts[0] != "licentia":
        raise ValueError(f"{module} is not a licentia module")
    return _PACKAGE.joinpath(*parts[1:]).with_suffix(".py")


def compiled() -> dict[str, str]:
    """The modules built as extensions for this interpreter: module -> SHA-256 of the source
    they were built from."""
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    sources = recorded.get("sources")
    if recorded.get("suffix") != suffix or not isinstance(sources, dict):
        return {}
    return {m: h for m, h in sources.items() if isinstance(h, str) and source_of(m).with_suffix(suffix).exists()}


def stale() -> list[str]:
    """Why compiled code would not match its source: an extension whose source changed since
    it was built, or one the manifest does not vouch for. Empty when all is in step."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    recorded = compiled()
    problems = []
    for module, built_from in sorted(recorded.items()):
        src = source_of(module)
        try:
            now = hashlib.sha256(src.read_bytes()).hexdigest()
        except OSError:
            continue  # an installed package without sources: nothing can be out of step
        if now != built_from:
            problems.append(f"{module}: {src.name} changed after {src.stem}{suffix} was built")
    # an extension for this interpreter that the manifest does not list (a manifest lost or
    # from another build) cannot be trusted to match either
    for ext in sorted(_PACKAGE.rglob("*" + suffix)):
        rel = ext.relative_to(_PACKAGE.parent)
        module = str(rel)[: -len(suffix)].replace("/", ".")
        if module.endswith("__mypyc") or module in recorded:
            continue
        if ext.with_name(ext.name[: -len(suffix)] + ".py").exists():
            problems.append(f"{module}: {ext.name} is not in {MANIFEST.name}")
    return problems


def check() -> None:
    """Refuse (LicentiaError, INTERNAL) when compiled code is out of step with its source."""
    problems = stale()
    if problems:
        from licentia.model import ErrorCode, LicentiaError

        raise LicentiaError(ErrorCode.INTERNAL, "compiled modules do not match their sources: " + "; ".join(problems),
                            "run `make native` to rebuild them, or `make pure` to remove them")
