"""`licentia runtime …`: run the runtime, show its configuration, verify a usage log."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from licentia.cli.common import machine_root, print_json
from licentia.cli.home import home_from
from licentia.model import ErrorCode, LicentiaError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from licentia.runtime import config

    p = sub.add_parser("runtime", help="the runtime service: serve licenses to programs (and the network)")
    rs = p.add_subparsers(dest="runtime_command", metavar="ACTION", required=True)

    serve = rs.add_parser("serve", help="run the runtime in the foreground (Ctrl-C or SIGTERM stops it)")
    serve.add_argument("--config", help="configuration file (default: HOME/runtime.toml)")
    config.add_flags(serve)
    serve.set_defaults(handler=cmd_serve)

    show = rs.add_parser("config", help="print the configuration in effect (or --defaults: a commented file)")
    show.add_argument("--config", help="configuration file (default: HOME/runtime.toml)")
    show.add_argument("--defaults", action="store_true", help="print a runtime.toml with every default")
    show.set_defaults(handler=cmd_config)

    status = rs.add_parser("status", help="ask the running runtime about itself")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    verify = rs.add_parser("verify-log", help="check a usage log's hash chain and signatures")
    verify.add_argument("files", nargs="+", help="log files, oldest first (usage-*.jsonl, then usage.jsonl)")
    verify.add_argument("--public-key", help="the runtime's public key (hex); default: this home's runtime key")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=cmd_verify_log)


def _config(args: argparse.Namespace, *, flags: bool) -> Any:
    from licentia.runtime import config

    overrides = config.overrides_from(args) if flags else {}
    return config.build(home_from(args), overrides, config_file=Path(args.config) if args.config else None)


def cmd_serve(args: argparse.Namespace) -> int:
    from licentia.runtime import serve

    home = home_from(args)
    cfg = _config(args, flags=True)

    def ready(runtime: Any) -> None:
        ports = runtime.ports
        parts = []
        if "socket" in ports:
            parts.append(f"socket {ports['socket']}")
        if "local_port" in ports:
            parts.append(f"local {ports['local_address']}:{ports['local_port']}")
        if "network_port" in ports:
            parts.append(f"network {ports['network_address']}:{ports['network_port']} (TLS, pin {ports['certificate_pin']})")
        if "http_port" in ports:
            parts.append(f"WebAdmin {ports.get('http_scheme', 'http')}://{ports['http_address']}:{ports['http_port']}/")
        print(f"licentia runtime {os.getpid()} serving {home}", file=sys.stderr)
        print(f"  containers: {', '.join(sorted(runtime.containers.loaded)) or 'none'}", file=sys.stderr)
        for path, problem in runtime.containers.problems.items():
            print(f"  container {path}: {problem.error}", file=sys.stderr)
        print("  " + "; ".join(parts), file=sys.stderr)
        sys.stderr.flush()

    serve(home, cfg, machine_root=machine_root(args), environ=os.environ, on_ready=ready)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from licentia.runtime import config

    if args.defaults:
        sys.stdout.write(config.default_file())
        return 0
    print_json(asdict(_config(args, flags=False)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from licentia.sdk.admin import admin_client

    with admin_client(home_from(args)) as client:
        info = client.request("info", what="server")["server"]
        containers = client.request("info", what="containers")["containers"]
    if args.json:
        print_json({"server": info, "containers": containers})
        return 0
    print(f"runtime pid {info['pid']} on {info['host']}: {info['sessions']} session(s), "
          f"{info['connections']} connection(s), {'network server' if info['network'] else 'local only'}")
    for c in containers:
        print(f"  container {c['serial']}: {c['status']} ({c['items'] if c['items'] is not None else '-'} items)")
    for addr, up in (info.get("upstreams") or {}).items():
        print(f"  server {addr}: {'reachable' if up['reachable'] else 'unreachable'}"
              + (f" ({up['error']})" if up.get("error") else ""))
    return 0


def cmd_verify_log(args: argparse.Namespace) -> int:
    from licentia.runtime.home import RuntimeHome
    from licentia.runtime.usagelog import verify_log

    expected: bytes | None = None
    if args.public_key:
        try:
            expected = bytes.fromhex(args.public_key)
        except ValueError:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "--public-key must be hex") from None
    else:
        key_path = RuntimeHome(home_from(args)).runtime_key
        if key_path.exists():
            from licentia.crypto import signing_public_key

            expected = signing_public_key(key_path.read_bytes())
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.exists():
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"no log file {path}")
    report = verify_log(paths, expected)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.entries} entries in {len(paths)} file(s); {report.signatures} signature(s) verified"
              + ("" if expected else " (against the key the log names: give --public-key to pin it)"))
        for problem in report.problems:
            print(f"  {problem}")
    if not report.ok:
        raise LicentiaError(ErrorCode.USAGE_LOG_ALTERED, f"the usage log was altered: {report.problems[0]}")
    if args.json:
        return 0
    if report.unsigned_tail:
        # chained but not signed: whoever can write the file could have rewritten or cut these
        print(f"the signed entries (up to entry {report.last_signed_seq}) verify; the last "
              f"{report.unsigned_tail} entries are not signed yet, so they are not proved (edited or cut lines "
              "there cannot be detected until the runtime's next checkpoint signs them)")
        return 0
    print(f"the log is intact (signed up to entry {report.last_signed_seq})")
    return 0
