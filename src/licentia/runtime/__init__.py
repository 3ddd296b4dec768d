"""The runtime: the daemon that hands licenses to protected programs.

- `server.Runtime`: the daemon, put together from its parts: `connection` (framing,
  limits), `router` (operation -> handler), `ident` (who asks), `grants` (this
  machine's containers), `network` (seats on network servers), `housekeeping` (reaping,
  expiry, rescans, the seat snapshot), `events` and `queries` (what the status API
  shows); `tokens`, `cloud` and `sync` are collaborators that see it as `host.Runtime`;
- `config`: the settings (TOML file and flags), `home`: the files of a runtime home;
- `licenses`: the containers of the home, cached and judged in memory;
- `commit`: durable container changes with group commit;
- `usagelog`: the hash-chained, signed usage log and its verification;
- `searchlist`: the server search list and UDP discovery;
- `status`: the HTTP port (uvicorn in the runtime's loop) serving `webadmin`: WebAdmin,
  the JSON API and /metrics; `diag`: the archive `licentia diag` writes;
- `acl` and `aclwatch`: the access list in the home and the gate the access path consults;
- `procs`: process identity (PID and start time) and peer credentials.
- `portuser`: who holds a port the runtime cannot listen on (1420/1421 at start).

docs/runtime.md describes running it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from licentia.runtime.config import RuntimeConfig
from licentia.runtime.home import RuntimeHome

__all__ = ["RuntimeConfig", "RuntimeHome", "serve"]


def check_runtime_home(home: RuntimeHome, config: RuntimeConfig) -> None:
    """Refuse to run on a home whose directories, keys or tokens another user can change
    (docs/runtime.md, *Home*); the configuration file was checked when it was read."""
    from licentia.homes import check_all

    checks = [(home.path, "runtime home", False)]
    checks += [(d, f"runtime directory {d.name}/", False) for d in (home.containers, home.state, home.logs, home.tls)]
    checks += [(home.runtime_key, "runtime signing key", True), (home.admin_token_file, "admin token", True),
               (home.client_id_file, "client id", False), (home.tls / "server.key", "TLS private key", True)]
    if config.private_key:
        checks.append((config.path(home.path, config.private_key), "TLS private key ([network] private_key)", True))
    if config.token_pin_file:
        checks.append((config.path(home.path, config.token_pin_file), "token PIN file", False))
    check_all(checks)


def serve(home: Path, config: RuntimeConfig, *, machine_root: Path = Path("/"), environ: Any = None,
          on_ready: Callable[[Any], None] | None = None) -> None:
    """Run a runtime in the foreground until SIGTERM or SIGINT."""
    from licentia import native
    from licentia.binding import collect_fingerprint

    native.check()  # before the import: a compiled module older than its source must not run
    from licentia.runtime.server import Runtime

    check_runtime_home(RuntimeHome(home), config)

    fingerprint = collect_fingerprint(machine_root, environ=environ)
    runtime = Runtime(RuntimeHome(home), config, fingerprint=fingerprint, machine_root=machine_root)

    async def main() -> None:
        await runtime.start()
        try:
            if on_ready is not None:
                on_ready(runtime)
            await runtime.serve_forever()
        finally:
            await runtime.stop()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
