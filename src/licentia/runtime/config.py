"""The runtime's settings: one TOML file (`runtime.toml` in the home), every key also a flag.

`SETTINGS` lists each setting once: its TOML section and key, its type, its default and
what it does. The file, the command line (`licentia runtime serve --network-port 22350`)
and docs/runtime.md all come from it. A flag wins over the file, the file over the default.
Relative paths are relative to the home.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from licentia.core.seats import DEFAULT_CLIENT_TIMEOUT, MIN_CLIENT_TIMEOUT
from licentia.homes import check_all
from licentia.model import ErrorCode, LicentiaError

CONFIG_NAME = "runtime.toml"
ORDERS = ("local-first", "network-first", "local", "network")


@dataclass(frozen=True)
class Setting:
    name: str  # attribute of RuntimeConfig and the flag (--name-with-dashes)
    section: str
    key: str
    kind: type  # bool, int, float or str
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("socket", "local", "socket", str, "runtime.sock",
            "Unix socket for programs on this machine (empty: none)"),
    Setting("local_address", "local", "address", str, "127.0.0.1",
            "loopback address of the plain TCP endpoint for programs on this machine"),
    Setting("local_port", "local", "port", int, 22349,
            "port of that endpoint (0: any free port; -1: no TCP endpoint)"),
    Setting("network", "network", "enabled", bool, False,
            "serve other machines as a network license server (TLS 1.3)"),
    Setting("network_address", "network", "address", str, "0.0.0.0",
            "address the network listener binds"),
    Setting("network_port", "network", "port", int, 22350,
            "TCP port for other machines (0: any free port)"),
    Setting("client_timeout", "network", "client_timeout", float, DEFAULT_CLIENT_TIMEOUT,
            f"seconds a network client may stay silent before its seats are freed (at least {MIN_CLIENT_TIMEOUT:g})"),
    Setting("certificate", "network", "certificate", str, "",
            "server certificate (PEM); default: tls/server.crt, created at first start"),
    Setting("private_key", "network", "private_key", str, "",
            "private key of that certificate (PEM); default: tls/server.key"),
    Setting("discovery", "network", "discovery", bool, False,
            "answer UDP discovery broadcasts on the discovery port"),
    Setting("discovery_port", "network", "discovery_port", int, 22350,
            "UDP port of server discovery"),
    Setting("http_address", "http", "address", str, "127.0.0.1",
            "address of WebAdmin, the JSON API and /metrics"),
    Setting("http_port", "http", "port", int, 22352,
            "port of WebAdmin, the JSON API and /metrics (0: any free port; -1: off)"),
    Setting("http_tls", "http", "tls", bool, True,
            "serve the HTTP port over HTTPS with the runtime's certificate (tls/server.crt)"),
    Setting("http_limit_concurrency", "http", "limit_concurrency", int, 64,
            "connections and requests open at once on the HTTP port; more are answered 503"),
    Setting("http_timeout_keep_alive", "http", "timeout_keep_alive", int, 5,
            "seconds an idle keep-alive HTTP connection stays open"),
    Setting("http_head_timeout", "http", "head_timeout", float, 10.0,
            "seconds a new HTTP connection may take to send its first request's headers"),
    Setting("http_max_body", "http", "max_body", int, 65536,
            "largest request body on the HTTP port, in bytes (larger: 413)"),
    Setting("http_max_head", "http", "max_head", int, 16384,
            "largest request line and headers on the HTTP port, in bytes (larger: 400 or 431)"),
    Setting("order", "search", "order", str, "local-first",
            "where an access looks unless it says: local-first, network-first, local or network"),
    Setting("broadcast", "search", "broadcast", bool, False,
            "find network servers by UDP broadcast when the server search list has none that answers"),
    Setting("broadcast_address", "search", "broadcast_address", str, "255.255.255.255",
            "where discovery broadcasts go"),
    Setting("broadcast_port", "search", "broadcast_port", int, 22350,
            "UDP port discovery broadcasts go to"),
    Setting("broadcast_wait", "search", "broadcast_wait", float, 1.0,
            "seconds to wait for answers to a discovery broadcast"),
    Setting("ca_file", "search", "ca_file", str, "",
            "trust network servers whose certificate this CA signed (default: pin each server on first use)"),
    Setting("keepalive_interval", "search", "keepalive_interval", float, 0.0,
            "seconds between keep-alives to network servers (0: a quarter of the server's timeout)"),
    Setting("connect_timeout", "search", "connect_timeout", float, 3.0,
            "seconds to wait for a network server to answer"),
    Setting("reap_interval", "runtime", "reap_interval", float, 1.0,
            "seconds between checks for ended programs (and silent network clients)"),
    Setting("group_commit", "runtime", "group_commit", bool, True,
            "write concurrent unit decrements of a container in one durable transaction"),
    Setting("snapshot_delay", "runtime", "snapshot_delay", float, 1.0,
            "seconds after a seat change before the seat snapshot is written"),
    Setting("max_frame", "runtime", "max_frame", int, 1 << 20,
            "largest request frame of an admin connection (the runtime's own user on its Unix socket), in bytes"),
    Setting("max_program_frame", "limits", "max_frame", int, 64 << 10,
            "largest request frame of programs and network clients, in bytes (a larger one closes the connection)"),
    Setting("max_connections", "limits", "max_connections", int, 4096,
            "most connections served at once, on the TCP ports together and on the Unix socket each (also kept "
            "below the file-descriptor limit; a connection over it is refused with 1400 and closed)"),
    Setting("max_connections_per_peer", "limits", "max_connections_per_peer", int, 64,
            "most connections at once from one address on the network port"),
    Setting("max_buffered", "limits", "max_buffered", int, 64 << 20,
            "bytes of incomplete request frames held in total across connections (a connection that would "
            "go over it is closed); each connection holds at most one frame"),
    Setting("hello_timeout", "limits", "hello_timeout", float, 10.0,
            "seconds a connection (TLS handshake included) has to say hello before it is closed"),
    Setting("idle_timeout", "limits", "idle_timeout", float, 600.0,
            "seconds a connection that holds no seat may stay silent before it is closed"),
    Setting("max_keepalive_handles", "limits", "max_keepalive_handles", int, 1024,
            "most handles one keep-alive may name (a keep-alive naming none keeps alive all its client holds)"),
    Setting("frames_per_read", "limits", "frames_per_read", int, 16,
            "requests of one connection handled before the others get their turn (the rest wait, the "
            "connection's reading paused)"),
    Setting("log_rotate_bytes", "log", "rotate_bytes", int, 16 << 20,
            "rotate the usage log (and sign its chain head) at this size"),
    Setting("log_checkpoint_interval", "log", "checkpoint_interval", float, 60.0,
            "seconds between signed checkpoints of the usage log while it grows"),
    Setting("log_flush_interval", "log", "flush_interval", float, 0.02,
            "seconds usage-log entries may wait in memory before they are written"),
    Setting("tokens", "tokens", "enabled", bool, True,
            "serve the token containers (PKCS#11) of the configured module"),
    Setting("token_module", "tokens", "module", str, "",
            "PKCS#11 module of token containers (default: $LICENTIA_PKCS11_MODULE, else the one "
            "recorded in containers/tokens.json)"),
    Setting("token_pin_file", "tokens", "pin_file", str, "",
            "file holding the tokens' user PIN (default: the PIN file recorded per container, "
            "else $LICENTIA_PIN_FILE or $LICENTIA_PIN)"),
    Setting("token_watch_interval", "tokens", "watch_interval", float, 0.5,
            "seconds between presence checks of each token in use (a pulled token is reported within "
            "this and one check)"),
    Setting("token_scan_interval", "tokens", "scan_interval", float, 5.0,
            "seconds between looks for token containers plugged in, or free again after another runtime "
            "held them"),
    Setting("cloud_credential", "cloud", "credentials", list, (),
            "cloud container credential files whose licenses this runtime offers (repeat the flag for several)"),
    Setting("cloud_lease", "cloud", "lease", int, 300,
            "seconds a cloud seat is leased from central; renewed every third of it"),
    Setting("cloud_refresh", "cloud", "refresh", float, 60.0,
            "seconds between asking central for the cloud containers' licenses (and whether their "
            "credentials still hold)"),
    Setting("central_url", "central", "url", str, "",
            "central's URL: sync every soft and token container with it (empty: no sync)"),
    Setting("central_interval", "central", "interval", float, 3600.0,
            "seconds between syncs with central (checkpoint licenses are renewed sooner, when less than "
            "half their period remains)"),
    Setting("central_timeout", "central", "timeout", float, 30.0,
            "seconds to wait for central to answer"),
    Setting("tmr_role", "tmr", "role", str, "",
            "\"upstream\": this runtime holds one constituent container of a TMR system (docs/tmr.md); "
            "empty: an ordinary runtime, which serves no TMR constituent"),
    Setting("tmr_etcd", "tmr", "etcd", list, (),
            "client URLs of the TMR system's etcd members (the seat store), e.g. http://10.0.0.11:2379"),
    Setting("tmr_front_end_ca", "tmr", "front_end_ca", str, "",
            "CA certificate (PEM) that signed the TMR front ends' client certificates"),
    Setting("borrow_cap", "borrow", "cap", int, 0,
            "longest borrow this server lends, in seconds, under each item's own borrow maximum "
            "(0: the item's maximum alone; -1: lend no seat)"),
    Setting("directory_url", "directory", "url", str, "",
            "LDAP or Active Directory server for the access list's group rules (ldap://host or "
            "ldaps://host; several, space-separated, tried in order; empty: no directory)"),
    Setting("directory_base", "directory", "base", str, "",
            "search base of users and groups (e.g. dc=example,dc=org)"),
    Setting("directory_bind_dn", "directory", "bind_dn", str, "",
            "DN to bind as (empty: anonymous)"),
    Setting("directory_password_file", "directory", "password_file", str, "",
            "file holding the bind password"),
    Setting("directory_user_filter", "directory", "user_filter", str, "",
            "filter that finds a user, {user} replaced (default: uid, sAMAccountName or userPrincipalName)"),
    Setting("directory_nested", "directory", "nested", str, "search",
            "nested groups: search (any LDAP server), in-chain (Active Directory) or none"),
    Setting("directory_ttl", "directory", "ttl", float, 300.0,
            "seconds a user's groups are cached"),
    Setting("directory_timeout", "directory", "timeout", float, 3.0,
            "seconds to wait for the directory (connect, and each answer)"),
    Setting("directory_start_tls", "directory", "start_tls", bool, False,
            "upgrade ldap:// connections with StartTLS"),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class RuntimeConfig:
    socket: str = "runtime.sock"
    local_address: str = "127.0.0.1"
    local_port: int = 22349
    network: bool = False
    network_address: str = "0.0.0.0"
    network_port: int = 22350
    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    certificate: str = ""
    private_key: str = ""
    discovery: bool = False
    discovery_port: int = 22350
    http_address: str = "127.0.0.1"
    http_port: int = 22352
    http_tls: bool = True
    http_limit_concurrency: int = 64
    http_timeout_keep_alive: int = 5
    http_head_timeout: float = 10.0
    http_max_body: int = 65536
    http_max_head: int = 16384
    order: str = "local-first"
    broadcast: bool = False
    broadcast_address: str = "255.255.255.255"
    broadcast_port: int = 22350
    broadcast_wait: float = 1.0
    ca_file: str = ""
    keepalive_interval: float = 0.0
    connect_timeout: float = 3.0
    reap_interval: float = 1.0
    group_commit: bool = True
    snapshot_delay: float = 1.0
    max_frame: int = 1 << 20
    max_program_frame: int = 64 << 10
    max_connections: int = 4096
    max_connections_per_peer: int = 64
    max_buffered: int = 64 << 20
    hello_timeout: float = 10.0
    idle_timeout: float = 600.0
    max_keepalive_handles: int = 1024
    frames_per_read: int = 16
    log_rotate_bytes: int = 16 << 20
    log_checkpoint_interval: float = 60.0
    log_flush_interval: float = 0.02
    tokens: bool = True
    token_module: str = ""
    token_pin_file: str = ""
    token_watch_interval: float = 0.5
    token_scan_interval: float = 5.0
    cloud_credential: tuple[str, ...] = ()
    cloud_lease: int = 300
    cloud_refresh: float = 60.0
    central_url: str = ""
    central_interval: float = 3600.0
    central_timeout: float = 30.0
    tmr_role: str = ""
    tmr_etcd: tuple[str, ...] = ()
    tmr_front_end_ca: str = ""
    borrow_cap: int = 0
    directory_url: str = ""
    directory_base: str = ""
    directory_bind_dn: str = ""
    directory_password_file: str = ""
    directory_user_filter: str = ""
    directory_nested: str = "search"
    directory_ttl: float = 300.0
    directory_timeout: float = 3.0
    directory_start_tls: bool = False

    def check(self) -> RuntimeConfig:
        """Refuse settings that cannot work, with what to change."""
        if self.client_timeout < MIN_CLIENT_TIMEOUT:
            _bad(f"client_timeout {self.client_timeout:g} s is too short; use at least {MIN_CLIENT_TIMEOUT:g} s")
        for name in ("local_port", "http_port"):
            port = getattr(self, name)
            if not -1 <= port <= 65535:
                _bad(f"{name} {port} is not a port (0 for any free port, -1 for off)")
        for name in ("network_port", "discovery_port", "broadcast_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                _bad(f"{name} {port} is not a port")
        if self.http_limit_concurrency < 1 or self.http_head_timeout <= 0 or self.http_timeout_keep_alive < 1 or self.http_max_body < 1024 \
                or self.http_max_head < 1024:
            _bad("the [http] limits must be positive (max_body and max_head at least 1024 bytes)")
        if self.order not in ORDERS:
            _bad(f"order {self.order!r} is unknown; use {', '.join(ORDERS)}")
        for name in ("reap_interval", "broadcast_wait", "connect_timeout", "log_flush_interval",
                     "log_checkpoint_interval"):
            if getattr(self, name) <= 0:
                _bad(f"{name} must be a positive number of seconds")
        if self.snapshot_delay < 0 or self.keepalive_interval < 0:
            _bad("snapshot_delay and keepalive_interval must not be negative")
        if self.max_frame < 1024 or self.max_program_frame < 1024:
            _bad("max_frame must be at least 1024 bytes")
        if self.max_program_frame > self.max_frame:
            _bad("[limits] max_frame must not be larger than [runtime] max_frame (the admin connections' limit)")
        for name in ("max_connections", "max_connections_per_peer", "max_keepalive_handles", "frames_per_read"):
            if getattr(self, name) < 1:
                _bad(f"{name} must be at least 1")
        if self.max_buffered < self.max_program_frame:
            _bad("[limits] max_buffered must hold at least one frame ([limits] max_frame)")
        if self.hello_timeout <= 0 or self.idle_timeout <= 0:
            _bad("hello_timeout and idle_timeout must be positive numbers of seconds")
        if self.log_rotate_bytes < 4096:
            _bad("log rotate_bytes must be at least 4096")
        for name in ("token_watch_interval", "token_scan_interval", "cloud_refresh", "central_interval",
                     "central_timeout"):
            if getattr(self, name) <= 0:
                _bad(f"{name} must be a positive number of seconds")
        if not 30 <= self.cloud_lease <= 3600:
            _bad(f"cloud lease {self.cloud_lease} s is out of range; use 30 to 3600 seconds")
        if self.directory_url and not all(u.startswith(("ldap://", "ldaps://")) for u in self.directory_url.split()):
            _bad(f"directory url {self.directory_url!r} must start with ldap:// or ldaps://")
        if self.directory_nested not in ("search", "in-chain", "none"):
            _bad(f"directory nested {self.directory_nested!r} is unknown; use search, in-chain or none")
        if self.directory_ttl <= 0 or self.directory_timeout <= 0:
            _bad("directory ttl and timeout must be positive numbers of seconds")
        if self.central_url and not self.central_url.startswith(("http://", "https://")):
            _bad(f"central url {self.central_url!r} must start with http:// or https://")
        if self.tmr_role not in ("", "upstream"):
            _bad(f"[tmr] role {self.tmr_role!r} is unknown; use \"upstream\" or leave it empty")
        if self.tmr_role == "upstream" and (len(self.tmr_etcd) != 3 or not self.tmr_front_end_ca):
            _bad("a TMR upstream needs [tmr] etcd (the three members' URLs) and [tmr] front_end_ca; "
                 "`licentia tmr init` writes them")
        for url in self.tmr_etcd:
            if not url.startswith(("http://", "https://")):
                _bad(f"[tmr] etcd URL {url!r} must start with http:// or https://")
        return self

    def keepalive_for(self, server_timeout: float) -> float:
        """Seconds between keep-alives to a server with this client timeout."""
        if self.keepalive_interval > 0:
            return min(self.keepalive_interval, server_timeout / 2)
        return max(server_timeout / 4, 0.5)

    def path(self, home: Path, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else home / p


def _bad(message: str) -> None:
    raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"runtime configuration: {message}")


def load(path: Path) -> dict[str, Any]:
    """The settings a TOML file gives (only those it names), checked for type."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    known = {(s.section, s.key): s for s in SETTINGS}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{path}: {section!r} must be a [section]")
        for key, value in table.items():
            setting = known.get((section, key))
            if setting is None:
                raise LicentiaError(
                    ErrorCode.INVALID_PARAMETER,
                    f"{path}: unknown setting [{section}] {key}; see docs/runtime.md for the list",
                )
            out[setting.name] = _convert(setting, value, str(path))
    return out


def _convert(setting: Setting, value: Any, where: str) -> Any:
    kind = setting.kind
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"{where}: [{setting.section}] {setting.key} must be a list of strings, got {value!r}",
            )
        return tuple(value)
    ok = (
        isinstance(value, bool) if kind is bool
        else isinstance(value, int | float) and not isinstance(value, bool) if kind is float
        else isinstance(value, kind) and not isinstance(value, bool)
    )
    if not ok:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"{where}: [{setting.section}] {setting.key} must be {kind.__name__}, got {value!r}",
        )
    return float(value) if kind is float else value


def build(home: Path, overrides: Mapping[str, Any] | None = None, *, config_file: Path | None = None) -> RuntimeConfig:
    """Defaults, then the file, then `overrides` (flags that were given). A home or a
    configuration file that another user can write is refused (`licentia.homes`)."""
    path = config_file or home / CONFIG_NAME
    check_all([(home, "runtime home", False), (path.parent, "directory of the runtime configuration", False),
               (path, "runtime configuration", False)])
    values = load(path)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    known = {f.name for f in fields(RuntimeConfig)}
    return replace(RuntimeConfig(), **{k: v for k, v in values.items() if k in known}).check()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags stay None so the file decides."""
    for s in SETTINGS:
        flag = "--" + s.name.replace("_", "-")
        if s.kind is bool:
            parser.add_argument(flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{s.help} (default {str(s.default).lower()})")
        elif s.kind is list:
            parser.add_argument(flag, dest=s.name, action="append", default=None,
                                metavar="URL" if s.name == "tmr_etcd" else "FILE",
                                help=f"{s.help} (default none)")
        else:
            parser.add_argument(flag, dest=s.name, type=s.kind, default=None, metavar=s.kind.__name__.upper(),
                                help=f"{s.help} (default {s.default!r})")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    out = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def default_file() -> str:
    """A runtime.toml with every setting at its default, commented."""
    lines = ["# licentia runtime configuration. Every setting is optional; the defaults are shown.",
             "# Each is also a flag of `licentia runtime serve` (a flag wins over this file).", ""]
    section = None
    for s in SETTINGS:
        if s.section != section:
            if section is not None:
                lines.append("")
            lines.append(f"[{s.section}]")
            section = s.section
        lines.append(f"# {s.help}")
        lines.append(f"# {s.key} = {_toml_value(s.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def setting(name: str) -> Setting:
    return _BY_NAME[name]
