"""`licentia tmr …`: the 2-of-3 redundant license server (docs/tmr.md)."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError
from licentia.tmr.layout import Host, Layout, render


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tmr", help="the 2-of-3 redundant (TMR) license server")
    ts = p.add_subparsers(dest="tmr_command", metavar="ACTION", required=True)

    init = ts.add_parser(
        "init",
        help="write the configuration and systemd units of 3 upstream servers and 2 front ends",
        description="Write, one sub-directory per host, the etcd member configuration, the upstream "
        "runtimes' runtime.toml, the front ends' tmr.toml, systemd units and (with --virtual-address) "
        "keepalived configurations of a TMR system. Copy each sub-directory to its host (README.txt).",
    )
    init.add_argument("-o", "--output", required=True, help="directory to write (new or empty)")
    init.add_argument("--upstream", action="append", required=True, metavar="NAME=ADDRESS",
                      help="an upstream server (runtime + etcd member); give three")
    init.add_argument("--front-end", action="append", required=True, metavar="NAME=ADDRESS",
                      help="a front end; give two (the twins)")
    init.add_argument("--virtual-address", default="", metavar="ADDRESS/PREFIX",
                      help="the twins' shared address, moved by keepalived (e.g. 10.0.0.100/24)")
    init.add_argument("--interface", default="eth0", help="network interface of the virtual address")
    init.add_argument("--etcd-client-port", type=int, default=2379)
    init.add_argument("--etcd-peer-port", type=int, default=2380)
    init.add_argument("--network-port", type=int, default=22350, help="licentia's protocol port")
    init.add_argument("--etcd-data-dir", default="/var/lib/licentia/etcd",
                      help="etcd's data directory on each upstream ('{name}' becomes the member's name)")
    init.add_argument("--cluster-token", help="etcd's initial cluster token (default: a random one)")
    init.set_defaults(handler=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    if len(args.upstream) != 3:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"give three --upstream hosts, not {len(args.upstream)}")
    if len(args.front_end) != 2:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"give two --front-end hosts, not {len(args.front_end)}")
    ups = [Host.parse(u) for u in args.upstream]
    fes = [Host.parse(f) for f in args.front_end]
    layout = Layout(
        upstreams=(ups[0], ups[1], ups[2]),
        front_ends=(fes[0], fes[1]),
        cluster_token=args.cluster_token or f"licentia-tmr-{secrets.token_hex(6)}",
        virtual_address=args.virtual_address,
        interface=args.interface,
        etcd_client_port=args.etcd_client_port,
        etcd_peer_port=args.etcd_peer_port,
        network_port=args.network_port,
        etcd_data_dir=args.etcd_data_dir,
    )
    files = render(layout)
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LicentiaError(
            ErrorCode.ALREADY_EXISTS,
            f"{out} exists and is not an empty directory",
            "name a new directory: a cluster token is made once, and rewriting live files would split the cluster",
        )
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode(), mode=0o644)
    print(f"TMR system: upstreams {', '.join(u.name for u in ups)}; front ends {', '.join(f.name for f in fes)}")
    print(f"etcd cluster token {layout.cluster_token}; members {', '.join(layout.etcd_endpoints)}")
    for rel in sorted(files):
        print(f"  {out / rel}")
    print(f"next: copy each host's directory as {out / 'README.txt'} says")
    return 0
