"""The SDK tests use the runtime tests' fixtures: a synthetic machine, a firm key, processes."""

from tests.runtime.conftest import other_root, procs, root, vendor

__all__ = ["other_root", "procs", "root", "vendor"]
