"""`licentia tmr …`: the 2-of-3 redundant license server (docs/tmr.md)."""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError
from licentia.tmr.layout import HOME, Host, Layout, render

STATE = f"{HOME}/tmr"  # the front end's state directory, as the systemd unit of `tmr init` runs it


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
    init.add_argument("--advert-interval", type=float, default=1.0,
                      help="seconds between VRRP advertisements of the twins (default 1)")
    init.add_argument("--router-id", type=int, default=73, help="the VRRP virtual router id (1-255, default 73)")
    init.add_argument("--etcd-client-port", type=int, default=2379)
    init.add_argument("--etcd-peer-port", type=int, default=2380)
    init.add_argument("--network-port", type=int, default=22350, help="licentia's protocol port")
    init.add_argument("--etcd-data-dir", default="/var/lib/licentia/etcd",
                      help="etcd's data directory on each upstream ('{name}' becomes the member's name)")
    init.add_argument("--cluster-token", help="etcd's initial cluster token (default: a random one)")
    init.set_defaults(handler=cmd_init)

    serve = ts.add_parser(
        "serve",
        help="run a TMR front end: the virtual container 131-… on the network port",
        description="Serve the TMR items that at least two of the three upstreams report identically, "
        "with seats and unit counters in etcd (docs/tmr.md). Client runtimes add it like any network "
        "server (`licentia server add HOST:PORT`).",
    )
    serve.add_argument("--config", help="the front end's tmr.toml (from `licentia tmr init`)")
    serve.add_argument("--state", default=STATE,
                       help=f"directory for its server certificate, pins and front-end.json (default {STATE})")
    serve.add_argument("--etcd", action="append", metavar="URL", help="an etcd member (give three; else tmr.toml's)")
    serve.add_argument("--upstream", action="append", metavar="HOST:PORT",
                       help="an upstream runtime's network port (give three; else tmr.toml's)")
    serve.add_argument("--certificate", help="the front end's client certificate (PEM)")
    serve.add_argument("--private-key", help="its private key (PEM)")
    serve.add_argument("--upstream-ca", help="trust the upstreams by this CA (default: pin on first use)")
    serve.add_argument("--address", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="network port (default 22350; 0: any free one)")
    serve.add_argument("--client-timeout", type=float, help="a silent client's seats are freed after this (s)")
    serve.add_argument("--poll-interval", type=float, help="how often the upstreams are asked (s, default 1)")
    serve.add_argument("--max-connections-per-peer", type=int,
                       help="most connections at once from one address (default 64; [limits] in tmr.toml)")
    serve.set_defaults(handler=cmd_serve)

    status = ts.add_parser("status", help="show a front end's upstreams, etcd members and virtual container")
    status.add_argument("--state", default=STATE, help=f"the front end's --state directory (default {STATE})")
    status.add_argument("--json", action="store_true", help="print the status JSON")
    status.set_defaults(handler=cmd_status)


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
        advert_interval=args.advert_interval,
        router_id=args.router_id,
        etcd_client_port=args.etcd_client_port,
        etcd_peer_port=args.etcd_peer_port,
        network_port=args.network_port,
        etcd_data_dir=args.etcd_data_dir,
    )
    files = {rel: text.encode() for rel, text in render(layout).items()}
    if layout.virtual_address:  # one server certificate for the twins: clients pin the virtual address's
        from licentia.crypto.tls import self_signed_server_certificate

        names = [*(f.address for f in fes), layout.virtual_address.split("/")[0], "localhost"]
        cert, key = self_signed_server_certificate("licentia TMR front ends", names, int(time.time()))
        for f in fes:
            files[f"{f.name}/server.crt"], files[f"{f.name}/server.key"] = cert, key
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LicentiaError(
            ErrorCode.ALREADY_EXISTS,
            f"{out} exists and is not an empty directory",
            "name a new directory: a cluster token is made once, and rewriting live files would split the cluster",
        )
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode=0o600 if rel.endswith(".key") else 0o644)
    print(f"TMR system: upstreams {', '.join(u.name for u in ups)}; front ends {', '.join(f.name for f in fes)}")
    print(f"etcd cluster token {layout.cluster_token}; members {', '.join(layout.etcd_endpoints)}")
    for rel in sorted(files):
        print(f"  {out / rel}")
    print(f"next: copy each host's directory as {out / 'README.txt'} says")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from licentia.tmr.frontend import load_config, run

    config = load_config(
        Path(args.config) if args.config else None, Path(args.state).resolve(),
        etcd=args.etcd, upstreams=args.upstream,
        certificate=Path(args.certificate).resolve() if args.certificate else None,
        private_key=Path(args.private_key).resolve() if args.private_key else None,
        upstream_ca=Path(args.upstream_ca).resolve() if args.upstream_ca else None,
        address=args.address, port=args.port, client_timeout=args.client_timeout, poll_interval=args.poll_interval,
        max_connections_per_peer=args.max_connections_per_peer,
    )
    print(f"TMR front end: virtual container {config.serial}; upstreams {', '.join(config.upstreams)}", flush=True)
    try:  # the event loop a runtime serves on (licentia.runtime.serve): TLS and frames cost less
        import uvloop
    except ImportError:
        asyncio.run(run(config))
    else:
        uvloop.run(run(config))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    path = Path(args.state) / "front-end.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise LicentiaError(ErrorCode.SERVER_NOT_FOUND,
                            f"no front end status in {path}", "is `licentia tmr serve --state` running there?") from None
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"TMR front end {doc['server']} (pid {doc['pid']}), port {doc.get('network_port')}: "
          f"virtual container {doc['serial']}")
    print("upstreams:")
    for up in doc["upstreams"]:
        state = "reachable" if up["reachable"] else f"UNREACHABLE ({up['error']})"
        cons = ", ".join(f"{k} {v}" for k, v in sorted(up.get("constituents", {}).items())) or "no TMR items"
        print(f"  {up['address']:<22} {state}; {cons}")
    print("etcd members:")
    for m in doc["etcd"]:
        print(f"  {m['endpoint']:<28} {'healthy' if m['healthy'] else 'UNHEALTHY'}")
    print(f"virtual container {doc['serial']}:")
    if not doc["items"]:
        print("  (no TMR items reported)")
    for it in doc["items"]:
        if it["available"] and it["error"] is None:
            what = f"served, quantity {it['quantity']}, from {', '.join(it['upstreams'])}"
        elif it["available"]:
            what = f"refused: error {it['error']} {it['reason']}"
        else:
            what = f"MISSING (error 130): {it['reason']}"
        print(f"  firm {it['firm']} product {it['product']} TMR license {it['tmr_id']}: {what}")
    return 0
