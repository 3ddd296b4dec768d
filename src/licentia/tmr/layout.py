"""The files of a TMR system: 3 upstream servers (each a licentia runtime beside an etcd
member) and 2 front ends (twins behind one virtual address), from a few names and addresses.

`render(layout)` is pure: it returns {relative path: file text}; `licentia tmr init` writes
them into a directory, one sub-directory per host, for the administrator to copy:

    <upstream>/etcd.conf.yml            the etcd member (etcd --config-file)
    <upstream>/runtime.toml             the runtime, with its [tmr] section
    <upstream>/licentia-etcd.service    systemd units
    <upstream>/licentia-runtime.service
    <front end>/tmr.toml                the front end: the seat store and the upstreams
    <front end>/licentia-tmr.service
    <front end>/keepalived.conf         with a virtual address: VRRP between the twins
    <front end>/server.crt, server.key  with a virtual address: one TLS certificate for both
                                        (made by `licentia tmr init`, not by `render`)
    README.txt                          what goes where
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from licentia.model import ErrorCode, LicentiaError

LAYOUT_VERSION = 1
CONFIG_DIR = "/etc/licentia"
HOME = "/var/lib/licentia"
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Host:
    name: str  # a short name: the etcd member name and the sub-directory
    address: str  # the address (or DNS name) the others reach it at

    @classmethod
    def parse(cls, text: str) -> Host:
        name, sep, address = text.partition("=")
        name, address = name.strip(), address.strip()
        if not sep:
            name, address = text.strip(), text.strip()
        if not _NAME.fullmatch(name):
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"host name {name!r}: use lowercase letters, digits and hyphens (NAME=ADDRESS)",
            )
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not _HOST.fullmatch(address):
                raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{address!r} is not an address or host name") from None
        return cls(name, address)

    def url(self, port: int) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{port}"


@dataclass(frozen=True)
class Layout:
    upstreams: tuple[Host, Host, Host]
    front_ends: tuple[Host, Host]
    cluster_token: str
    virtual_address: str = ""  # e.g. 10.0.0.100/24; empty: clients list both front ends
    interface: str = "eth0"
    advert_interval: float = 1.0  # VRRP advertisements between the twins (s)
    router_id: int = 73  # the VRRP virtual router id; differs from other VRRP groups on the network
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    network_port: int = 22350  # upstreams and front ends serve licentia's protocol here
    etcd_data_dir: str = f"{HOME}/etcd"  # "{name}" is replaced by the member's name
    executable: str = "/usr/local/bin/licentia"

    def __post_init__(self) -> None:
        names = [h.name for h in (*self.upstreams, *self.front_ends)]
        if len(set(names)) != len(names):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"host names must differ: {', '.join(names)}")
        for port in (self.etcd_client_port, self.etcd_peer_port, self.network_port):
            if not 1 <= port <= 65535:
                raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{port} is not a port")
        if self.etcd_client_port == self.etcd_peer_port:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "etcd's client and peer ports must differ")
        if self.virtual_address:
            try:
                ipaddress.ip_interface(self.virtual_address)
            except ValueError:
                raise LicentiaError(
                    ErrorCode.INVALID_PARAMETER,
                    f"virtual address {self.virtual_address!r} is not ADDRESS/PREFIX (e.g. 10.0.0.100/24)",
                ) from None
        if not 0.01 <= self.advert_interval <= 40.95:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the VRRP advert interval: 0.01 to 40.95 s")
        if not 1 <= self.router_id <= 255:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"VRRP router id {self.router_id}: 1 to 255")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.cluster_token):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the cluster token: letters, digits, '.', '_', '-'")
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,15}", self.interface):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"{self.interface!r} is not a network interface name")

    @property
    def etcd_endpoints(self) -> list[str]:
        return [u.url(self.etcd_client_port) for u in self.upstreams]


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _etcd_conf(layout: Layout, me: Host) -> str:
    initial = ",".join(f"{u.name}={u.url(layout.etcd_peer_port)}" for u in layout.upstreams)
    # etcd binds IP addresses only: a member named by DNS listens on every address
    try:
        ipaddress.ip_address(me.address)
        listen = me
    except ValueError:
        listen = Host(me.name, "0.0.0.0")
    data_dir = layout.etcd_data_dir.replace("{name}", me.name)
    return f"""# etcd member {me.name} of the licentia TMR system (format {LAYOUT_VERSION}; `licentia tmr init`).
# Start: etcd --config-file {CONFIG_DIR}/etcd.conf.yml (licentia-etcd.service does).
# The three members replicate the seats; two of three make a quorum.
# Traffic is plain HTTP: keep the five hosts on a private network, or add etcd's TLS settings
# (client-transport-security / peer-transport-security) here and https:// URLs everywhere.
name: {me.name}
data-dir: {data_dir}
listen-peer-urls: {listen.url(layout.etcd_peer_port)}
listen-client-urls: {listen.url(layout.etcd_client_port)}
initial-advertise-peer-urls: {me.url(layout.etcd_peer_port)}
advertise-client-urls: {me.url(layout.etcd_client_port)}
initial-cluster: {initial}
initial-cluster-token: {layout.cluster_token}
# "new" for the first start of all three; a replacement member joins with "existing" (docs/tmr.md)
initial-cluster-state: new
"""


def _runtime_toml(layout: Layout, me: Host) -> str:
    return f"""# licentia runtime of TMR upstream {me.name} (`licentia tmr init`; see docs/runtime.md, docs/tmr.md).
# It holds one constituent container of each TMR license and serves it only to the front ends.

[network]
enabled = true
address = "0.0.0.0"
port = {layout.network_port}

[tmr]
role = "upstream"
etcd = {_toml_list(layout.etcd_endpoints)}
# the CA that signed the front ends' client certificates (e.g. from `licentia vault`)
front_end_ca = "{CONFIG_DIR}/tmr-front-end-ca.pem"
"""


def _front_end_toml(layout: Layout, me: Host) -> str:
    upstreams = [f"{u.address}:{layout.network_port}" for u in layout.upstreams]
    return f"""# licentia TMR front end {me.name} (format {LAYOUT_VERSION}; `licentia tmr init`; docs/tmr.md).
# Serves the virtual container 131-… to clients; holds no state of its own (its twin may serve too).

[tmr]
etcd = {_toml_list(layout.etcd_endpoints)}
upstreams = {_toml_list(upstreams)}
# client certificate and key the upstreams accept (signed by their front_end_ca)
certificate = "{CONFIG_DIR}/tmr-front-end.crt"
private_key = "{CONFIG_DIR}/tmr-front-end.key"

[network]
address = "0.0.0.0"
port = {layout.network_port}
"""


_HARDENING = """NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
LockPersonality=yes
LimitNOFILE=65536
"""


def _etcd_unit(layout: Layout, me: Host) -> str:
    data_dir = layout.etcd_data_dir.replace("{name}", me.name)
    return f"""# etcd member {me.name} of the licentia TMR system (`licentia tmr init`).
# Install: cp to /etc/systemd/system/, `systemctl daemon-reload`, `systemctl enable --now licentia-etcd`.
[Unit]
Description=etcd member {me.name} (licentia TMR seat store)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
ExecStart=/usr/bin/etcd --config-file {CONFIG_DIR}/etcd.conf.yml
Restart=on-failure
RestartSec=2
ReadWritePaths={data_dir}
{_HARDENING}
[Install]
WantedBy=multi-user.target
"""


def _runtime_unit(layout: Layout, me: Host) -> str:
    return f"""# licentia runtime, TMR upstream {me.name} (`licentia tmr init`).
[Unit]
Description=licentia runtime (TMR upstream {me.name})
After=network-online.target licentia-etcd.service
Wants=network-online.target licentia-etcd.service

[Service]
Type=simple
Environment=LICENTIA_HOME={HOME}
ExecStart={layout.executable} runtime serve --config {CONFIG_DIR}/runtime.toml
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
User=root
StateDirectory=licentia
ReadWritePaths={HOME}
{_HARDENING}
[Install]
WantedBy=multi-user.target
"""


def _front_end_unit(layout: Layout, me: Host) -> str:
    return f"""# licentia TMR front end {me.name} (`licentia tmr init`).
[Unit]
Description=licentia TMR front end {me.name} (virtual container 131)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=LICENTIA_HOME={HOME}
ExecStart={layout.executable} tmr serve --config {CONFIG_DIR}/tmr.toml
KillSignal=SIGTERM
Restart=always
RestartSec=1
DynamicUser=yes
StateDirectory=licentia
{_HARDENING}
[Install]
WantedBy=multi-user.target
"""


def _keepalived(layout: Layout, me: Host, priority: int, peer: Host) -> str:
    # keepalived reads advert_int in seconds with up to two decimals (VRRP version 3)
    advert = f"{layout.advert_interval:.2f}".rstrip("0").rstrip(".")
    return f"""# keepalived on TMR front end {me.name} (`licentia tmr init`): the virtual address
# {layout.virtual_address} lives on one front end and moves to its twin when that one stops
# listening on port {layout.network_port} (VRRP, unicast between the twins). Both start as
# BACKUP with nopreempt: a returning front end does not take the address back.
# Install: cp to /etc/keepalived/keepalived.conf; systemctl restart keepalived.
global_defs {{
    router_id licentia-{me.name}
    vrrp_version 3
    script_user root
    enable_script_security
}}

# the front end is up while its port accepts a connection on this host; one refusal gives
# the address up (a priority-0 advertisement: the twin takes it at once)
vrrp_script licentia_tmr {{
    script "/bin/bash -c '</dev/tcp/127.0.0.1/{layout.network_port}'"
    interval 1
    timeout 1
    fall 1
    rise 2
}}

vrrp_instance licentia_tmr {{
    state BACKUP
    nopreempt
    interface {layout.interface}
    virtual_router_id {layout.router_id}
    priority {priority}
    advert_int {advert}
    unicast_src_ip {me.address}
    unicast_peer {{
        {peer.address}
    }}
    virtual_ipaddress {{
        {layout.virtual_address} dev {layout.interface}
    }}
    track_script {{
        licentia_tmr
    }}
}}
"""


SHARED_CERTIFICATE = f"""
  Clients pin the server certificate of the address they use: with a virtual address, both
  front ends present one. Copy <name>/server.crt and <name>/server.key (the same pair in
  both) to {HOME}/tmr/ on each front end before it first starts."""


def _readme(layout: Layout) -> str:
    up = ", ".join(f"{u.name} ({u.address})" for u in layout.upstreams)
    fe = ", ".join(f"{f.name} ({f.address})" for f in layout.front_ends)
    clients = (
        f"the virtual address {layout.virtual_address.split('/')[0]}:{layout.network_port}"
        if layout.virtual_address
        else " and ".join(f"{f.address}:{layout.network_port}" for f in layout.front_ends)
    )
    return f"""licentia TMR system (layout format {LAYOUT_VERSION}), written by `licentia tmr init`.

Upstream servers: {up}
  copy <name>/etcd.conf.yml and <name>/runtime.toml to {CONFIG_DIR}/ on that host,
  the two .service files to /etc/systemd/system/, then start licentia-etcd on all three
  (within a minute of each other) and licentia-runtime.
Front ends: {fe}
  copy <name>/tmr.toml to {CONFIG_DIR}/, licentia-tmr.service to /etc/systemd/system/{
  ', keepalived.conf to /etc/keepalived/' if layout.virtual_address else ''}.
Clients: put {clients} in their server search list.{
  SHARED_CERTIFICATE if layout.virtual_address else ''}

See docs/tmr.md for certificates, adding TMR licenses and replacing a member.
"""


def render(layout: Layout) -> dict[str, str]:
    """Every file of the layout, by path relative to the output directory."""
    files: dict[str, str] = {"README.txt": _readme(layout)}
    for u in layout.upstreams:
        files[f"{u.name}/etcd.conf.yml"] = _etcd_conf(layout, u)
        files[f"{u.name}/runtime.toml"] = _runtime_toml(layout, u)
        files[f"{u.name}/licentia-etcd.service"] = _etcd_unit(layout, u)
        files[f"{u.name}/licentia-runtime.service"] = _runtime_unit(layout, u)
    a, b = layout.front_ends
    for me, priority, peer in ((a, 150, b), (b, 100, a)):
        files[f"{me.name}/tmr.toml"] = _front_end_toml(layout, me)
        files[f"{me.name}/licentia-tmr.service"] = _front_end_unit(layout, me)
        if layout.virtual_address:
            files[f"{me.name}/keepalived.conf"] = _keepalived(layout, me, priority, peer)
    return files
