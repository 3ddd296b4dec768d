"""Where a protected program finds licenses, and how it introduces itself.

Search order (the first that applies wins):

1. `LICENTIA_SERVER=host[:port]`: talk to a network license server directly, over TLS
   (for a program in a container or on a machine without a runtime). The server is
   trusted by `LICENTIA_SERVER_PIN` (sha256:…), by `LICENTIA_CA_FILE`, or pinned on
   first use in `~/.local/share/licentia/pins/`. The program keeps its seats alive
   itself (a background thread sends keep-alives).
2. `LICENTIA_RUNTIME=/path/to/runtime.sock` or `host:port`: that runtime.
3. The runtime of `LICENTIA_HOME`, then of the user's home (`~/.local/share/licentia`),
   then the system one (`/var/lib/licentia`): its Unix socket, else the loopback port it
   wrote into `runtime.json`.
4. `127.0.0.1:22349`, the default loopback port.
"""

from __future__ import annotations

import os
import socket
import sys

from licentia.sdk.proof import session_environment, station_host_id

TYPE_CHECKING = False  # typing is not imported at run time: see licentia/__init__.py
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    class _TargetFields(NamedTuple):
        address: str
        network: bool  # a network server reached directly (TLS, keep-alives)
        tls_pin: str | None = None
        ca_file: str | None = None
        pin_file: str | None = None
else:
    from collections import namedtuple  # loaded already (enum needs it); typing is not

    _TargetFields = namedtuple("Target", ("address", "network", "tls_pin", "ca_file", "pin_file"),
                               defaults=(None, None, None))

DEFAULT_LOCAL_PORT = 22349


class Target(_TargetFields):
    """One place to look: `address` (a socket path or host:port), `network` (a network
    server reached directly: TLS, keep-alives), and how to trust it (`tls_pin`,
    `ca_file`, `pin_file`)."""

    __slots__ = ()


def _homes(environ: Any) -> list[str]:
    home = environ.get("LICENTIA_HOME")
    if home:
        return [os.path.expanduser(home)]
    homes = []
    user = os.path.expanduser("~")
    if user != "~":
        homes.append(os.path.join(user, ".local", "share", "licentia"))
    homes.append("/var/lib/licentia")
    return homes


def targets(environ: Any = None) -> list[Target]:
    """Where to look, in order."""
    env = os.environ if environ is None else environ
    server = env.get("LICENTIA_SERVER")
    if server:
        user_home = _homes(env)[0]
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in server).strip("_")
        return [Target(server, True, env.get("LICENTIA_SERVER_PIN") or None, env.get("LICENTIA_CA_FILE") or None,
                       os.path.join(user_home, "pins", f"{safe}.pin"))]
    explicit = env.get("LICENTIA_RUNTIME")
    if explicit:
        return [Target(explicit, False)]
    out: list[Target] = []
    for home in _homes(env):
        sock = os.path.join(home, "runtime.sock")
        if os.path.exists(sock):
            out.append(Target(sock, False))
            continue
        address = _runtime_address(os.path.join(home, "runtime.json"))
        if address is not None:
            out.append(Target(address, False))
    out.append(Target(f"127.0.0.1:{DEFAULT_LOCAL_PORT}", False))
    return out


# runtime.json path -> (mtime_ns, size, loopback address or None): read again only when it changes
_runtime_files: dict[str, tuple[int, int, str | None]] = {}


def _runtime_address(path: str) -> str | None:
    """The loopback address a runtime wrote into its `runtime.json`, if any."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    known = _runtime_files.get(path)
    if known is not None and known[0] == st.st_mtime_ns and known[1] == st.st_size:
        return known[2]
    address: str | None = None
    try:
        import json

        with open(path) as f:
            doc = json.load(f)
        address = f"{doc.get('local_address', '127.0.0.1')}:{int(doc['local_port'])}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        address = None
    if len(_runtime_files) > 64:
        _runtime_files.clear()
    _runtime_files[path] = (st.st_mtime_ns, st.st_size, address)
    return address


def process_start() -> int:
    """This process's start time (field 22 of /proc/self/stat), 0 where there is no /proc."""
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def program_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(argv0)
    return name if name not in ("", "-c", "-m") else os.path.basename(sys.executable)


def user_name() -> str:
    for var in ("USER", "LOGNAME", "USERNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


_SESSIONS = {"local": "local console", "remote-desktop": "remote desktop", "terminal-server": "terminal server session"}


def hello_client(target: Target, program: str | None = None, program_version: str | None = None,
                 resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the program says about itself in `hello` (the runtime checks it against what
    the kernel says, and the session it finds itself); `resume`, the identity an earlier
    hello reply issued (`client_id` and `secret`), keeps the seats taken under it."""
    client: dict[str, Any] = {
        "kind": "program",
        "pid": os.getpid(),
        "pid_start": process_start(),
        "program": program or program_name(),
        "user": user_name(),
        "host": socket.gethostname(),
    }
    if program_version:
        client["program_version"] = program_version
    env = session_environment()
    if target.network:
        # a server cannot look at this machine: say what it needs to count by station
        kind = _SESSIONS.get(env.get("LICENTIA_SESSION", "").strip().lower(), "local console")
        session_id = env.get("LICENTIA_SESSION_ID") or env.get("XDG_SESSION_ID") or ""
        client["session"] = kind
        client["station"] = {"host_id": station_host_id(),
                             "session_id": session_id if kind == "terminal server session" else ""}
    else:
        client["env"] = env
    if resume:
        client["resume"] = resume
    return client


def issued_identity(reply: dict[str, Any]) -> dict[str, Any] | None:
    """The identity a hello reply issued (to prove on the next connection), if any."""
    cid, secret = reply.get("client_id"), reply.get("secret")
    if isinstance(cid, str) and isinstance(secret, bytes):
        return {"client_id": cid, "secret": secret}
    return None


def tls_context(target: Target) -> Any:
    from licentia.protocol.tls import client_context

    if target.tls_pin:
        return client_context(fingerprint=target.tls_pin, ca_file=target.ca_file)
    if target.ca_file:
        return client_context(ca_file=target.ca_file)
    return client_context(pin_file=target.pin_file)
