"""Fail when licentia's sources import a private module of the standard library or of
another package (`_socket`, `_thread`, `_json`, `cryptography.hazmat.bindings._rust`, ...).

Such modules change without notice from one release of Python or of a library to the
next; licentia uses their public modules. licentia's own underscore modules
(`licentia.binding._fs`) are its business and allowed. Imports under
`if TYPE_CHECKING:` never run and are not checked.

    python scripts/check_public_imports.py [DIR ...]    (default: src)

Prints one line per private import (`path:line: module`) and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

OWN = "licentia"


def _private(module: str) -> bool:
    parts = module.split(".")
    if parts[0] == OWN or module == "__future__":
        return False
    return any(part.startswith("_") for part in parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[tuple[int, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child.test):
            for other in child.orelse:  # the `else:` of a TYPE_CHECKING block runs
                yield from _imports_of(other)
            continue
        yield from _imports_of(child)


def _imports_of(node: ast.AST) -> Iterator[tuple[int, str]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # `from pkg import _private_module`
                if alias.name.startswith("_") and not node.module.startswith(OWN):
                    yield node.lineno, f"{node.module}.{alias.name}"
    else:
        yield from _imports(node)


def private_imports(root: Path) -> list[str]:
    """`path:line: module` for every private import under `root`."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += [f"{path}:{line}: {module}" for line, module in _imports(tree) if _private(module)]
    return found


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(__file__).resolve().parent.parent / "src"]
    found = [line for root in roots for line in private_imports(root)]
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} import(s) of private modules: use the public module instead", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
