"""Run one fuzz target under atheris (libFuzzer), from a corpus seeded by the real encoders.

    python fuzz/run.py TARGET [libFuzzer options, e.g. -max_total_time=60 or -runs=1000000]
    python fuzz/run.py --list

The corpus lives in fuzz/corpus/TARGET/ (not kept in git; seeded at the first run); a crash
is written to fuzz/crashes/ with the input that made it. libFuzzer's last line says how many
inputs ran ("Done N runs in S second(s)").
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(2)
    if sys.argv[1] == "--list":
        from fuzz.targets import TARGETS

        print("\n".join(TARGETS))
        return
    import atheris

    with atheris.instrument_imports(include=["licentia", "msgpack"]):
        import licentia.central.api
        import licentia.central.guard
        import licentia.containers.soft
        import licentia.core.blacklist
        import licentia.core.updates
        import licentia.protocol.frames
        import licentia.protocol.messages
        import licentia.vault.package  # noqa: F401
    from fuzz import seeds, targets

    name = sys.argv[1]
    target = targets.TARGETS[name]
    corpus = HERE / "corpus" / name
    crashes = HERE / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    if not corpus.is_dir() or not any(corpus.iterdir()):
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds.seeds()[name]):
            (corpus / f"seed-{i}").write_bytes(seed)
    args = [sys.argv[0], *sys.argv[2:], f"-artifact_prefix={crashes}/{name}-", "-max_len=65536", str(corpus)]
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
