"""A protected program: it runs only while it holds a license from the licentia runtime.

    LICENTIA_HOME=~/.local/share/licentia/demo python examples/protected_app.py

It takes the license (firm 10001, product 7 of `licentia demo`), verifies the answer with
the firm's public key, spends one unit, then works until Ctrl-C (or --seconds), checking
every few seconds that the license still holds. A second copy started while the first
runs gets error 212 (all seats taken) when the license quantity is 1; killing the first
(even with SIGKILL) frees its seat at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import licentia


def firm_key_file(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("LICENTIA_FIRM_KEY"):
        return os.environ["LICENTIA_FIRM_KEY"]
    home = os.environ.get("LICENTIA_HOME") or str(Path.home() / ".local" / "share" / "licentia" / "demo")
    return str(Path(home) / "demo-firm.pub")  # in a product, the key is embedded in the program


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--firm-code", type=int, default=10001)
    parser.add_argument("--product-code", type=int, default=7)
    parser.add_argument("--firm-key", help="the firm's public key file (licentia vendor export-public)")
    parser.add_argument("--mode", default="per-access")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
    args = parser.parse_args()

    def on_event(lic: licentia.License, event: licentia.Event, detail: str) -> None:
        print(f"event: {event.value} {detail}", flush=True)

    try:
        lic = licentia.access(args.firm_code, args.product_code, mode=args.mode,
                              firm_key=firm_key_file(args.firm_key), on_event=on_event, watch_interval=3.0)
    except licentia.LicentiaError as exc:
        print(f"no license: {exc}", file=sys.stderr)
        return 2
    with lic:
        info = lic.info
        print(f"licensed (pid {os.getpid()}): handle {info.handle}, container {info.container}, "
              f"{info.location}; {info.text or 'no text'}; units left {info.units}", flush=True)
        if info.units:
            print(f"spent one unit, {lic.decrement(1)} left", flush=True)
        start = time.monotonic()
        try:
            while args.seconds is None or time.monotonic() - start < args.seconds:
                time.sleep(1.0)
                if not lic.valid:
                    print("the license is gone; stopping", flush=True)
                    return 3
        except KeyboardInterrupt:
            pass
    print("released the license", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
