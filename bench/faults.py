"""Fault runs: programs, client runtimes and the license server killed at random, with the
invariants checked after every step.

One network server (`licentia runtime serve --network`) holds a license of QUANTITY seats
with a unit counter. Around it: programs talking to it directly (`LICENTIA_SERVER`),
client runtimes, and programs talking through those. Each step does one random thing:
start a program, spend a unit, release, SIGKILL a program, SIGKILL or restart a client
runtime, SIGKILL and restart the server. A *run* is one fault (a SIGKILL of a program, a
client runtime or the server, or a restart) with the normal traffic before it, followed
by the full check:

- **seats**: never more seats held than QUANTITY, by the server's view (`sessions`) and by
  the programs' own (the live programs whose `check` says their license is valid);
- **units**: the server's unit counter equals the start minus every acknowledged decrement
  (no acknowledged decrement lost, none counted twice);
- **handles**: no handle is handed out twice by the same runtime, across its crashes too;
- **dead holders**: the seat of a killed program is gone from the server within the
  client timeout (plus the reap interval and one second of slack).

    .venv/bin/python bench/faults.py --runs 1000     # about 10 minutes on a quiet machine
    .venv/bin/python bench/faults.py --runs 30 --seed 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

PRODUCT = 3
QUANTITY = 3
UNITS = 1_000_000
CLIENT_TIMEOUT = 5.0
REAP = 0.2
SLACK = 1.0
CLIENTS = 2  # client runtimes

PROGRAM = textwrap.dedent("""
    import json, sys
    import licentia
    opts = json.loads(sys.argv[1])
    try:
        lic = licentia.access(**opts)
    except licentia.LicentiaError as exc:
        print(json.dumps({"error": int(exc.code)}), flush=True)
        sys.exit(0)
    print(json.dumps({"handle": lic.info.handle, "units": lic.info.units}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        try:
            if cmd[0] == "check":
                lic.check()
                out = {"valid": lic.valid}
            elif cmd[0] == "decrement":
                out = {"units": lic.decrement(int(cmd[1]))}
            elif cmd[0] == "release":
                lic.release()
                out = {"released": True}
            else:
                out = {"unknown": cmd[0]}
        except licentia.LicentiaError as exc:
            out = {"error": int(exc.code)}
        print(json.dumps(out), flush=True)
""")


def add_fault_license(home: B.BenchHome) -> None:
    from licentia.containers import ContainerStore
    from licentia.core import updates
    from licentia.core.content import ContainerContent
    from licentia.model import ContainerSerial, ProductItem
    from licentia.vendor.keystore import load_keystore

    passphrase = (home.path / "demo-passphrase").read_text().strip()
    keys = load_keystore(home.path / "vendor" / f"firm-{home.firm}.keystore", passphrase)
    container = ContainerStore(home.path / "containers", B.machine_fingerprint()).open(ContainerSerial.parse(home.serial))
    now = int(time.time())

    def change(c: ContainerContent) -> tuple[ContainerContent, Any]:
        request = updates.read_request(updates.make_request(c, home.firm, now, {}))
        item = ProductItem(product_code=PRODUCT, quantity=QUANTITY, units=UNITS, text="fault runs")
        update = updates.issue_update(request, home.firm, keys.private_key,
                                      [updates.PutItem(request.next_item_id(), item)], now)
        applied = updates.apply_update(c, update, now, in_vm=False)
        return applied.content, applied

    container.transact(change)


def deadline() -> float:
    return time.monotonic() + CLIENT_TIMEOUT + REAP + SLACK


class Serve:
    """A `licentia runtime serve` that can be killed and started again on the same ports."""

    def __init__(self, stopper: B.Stopper, home: Path, flags: list[str]) -> None:
        self.stopper, self.home, self.flags = stopper, home, flags
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        status = self.home / "runtime.json"
        with contextlib.suppress(FileNotFoundError):
            status.unlink()
        argv = [B.PY, "-m", "licentia.cli.main", "--home", str(self.home), "runtime", "serve",
                "--http-port", "-1", "--reap-interval", str(REAP), *self.flags]
        log = open(self.home / "serve.log", "ab")  # noqa: SIM115
        self.proc = self.stopper.spawn(argv, env=B.child_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.home.name} exited with {proc.returncode}: "
                                   f"{(self.home / 'serve.log').read_text()[-2000:]}")
            try:
                return int(json.loads(status.read_text()).get("pid", 0)) == proc.pid
            except (OSError, ValueError):
                return False

        B.wait_for(f"{self.home.name} to start", ready, timeout=60)
        self.incarnation += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def admin(self, op: str, **fields: Any) -> dict[str, Any]:
        from licentia.sdk.admin import admin_client

        with admin_client(self.home) as c:
            reply: dict[str, Any] = c.request(op, **fields)
            return reply


@dataclass
class Program:
    proc: subprocess.Popen[bytes]
    via: str  # "server" or "client-N"
    handle: int | None = None
    killed_at: float | None = None

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return {"error": -1}
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return {"error": -2}
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"error": -1}


@dataclass
class World:
    server: Serve
    clients: list[Serve]
    program_homes: Path
    server_address: str
    pin: str
    firm_key: Path
    firm: int
    stopper: B.Stopper
    programs: list[Program] = field(default_factory=list)
    # killed programs: pid -> (the runtime it went through, the time its seat must be back by)
    dead: dict[int, tuple[str, float]] = field(default_factory=dict)
    acked_units: int = 0
    handles: dict[str, set[int]] = field(default_factory=dict)
    violations: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)

    def violation(self, kind: str, text: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {text}")

    # -- actions --

    def start_program(self, rng: random.Random) -> None:
        choice = rng.randrange(CLIENTS + 1)
        if choice == CLIENTS:
            via = "server"
            env = B.child_env(LICENTIA_SERVER=self.server_address, LICENTIA_SERVER_PIN=self.pin,
                              LICENTIA_HOME=str(self.program_homes))
        else:
            via = f"client-{choice}"
            env = B.child_env(LICENTIA_HOME=str(self.clients[choice].home))
        opts = {"firm_code": self.firm, "product_code": PRODUCT, "firm_key": str(self.firm_key)}
        proc = self.stopper.spawn([B.PY, "-c", PROGRAM, json.dumps(opts)], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        prog = Program(proc, via)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        first = json.loads(proc.stdout.readline() or b"{}") if ready else {}
        if "handle" in first:
            prog.handle = int(first["handle"])
            issuer = via if via != "server" else f"server#{self.server.incarnation}"
            # a runtime's handles: the server's for direct programs, the client runtime's otherwise
            key = "server" if via == "server" else via
            seen = self.handles.setdefault(key, set())
            if prog.handle in seen:
                self.violation("handle reused", f"{issuer} gave handle {prog.handle} a second time")
            seen.add(prog.handle)
            self.programs.append(prog)
            self.actions["grant"] += 1
        else:
            self.actions[f"refused {first.get('error')}"] += 1
            self.stopper.stop(proc)

    def holders(self) -> list[Program]:
        return [p for p in self.programs if p.proc.poll() is None]

    def decrement(self, rng: random.Random) -> None:
        live = self.holders()
        if not live:
            return
        reply = rng.choice(live).ask("decrement 1")
        if "units" in reply:
            self.acked_units += 1
            self.actions["decrement acked"] += 1
        else:
            self.actions[f"decrement {reply.get('error')}"] += 1

    def release(self, rng: random.Random) -> None:
        live = self.holders()
        if not live:
            return
        prog = rng.choice(live)
        prog.ask("release")
        self.stopper.stop(prog.proc)
        self.programs.remove(prog)
        self.actions["release"] += 1

    def kill_program(self, rng: random.Random) -> None:
        live = self.holders()
        if not live:
            return
        prog = rng.choice(live)
        prog.proc.send_signal(signal.SIGKILL)
        prog.proc.wait(15)
        self.programs.remove(prog)
        self.dead[prog.proc.pid] = (prog.via, deadline())
        self.actions["kill program"] += 1

    def kill_client(self, rng: random.Random) -> None:
        client = rng.choice(self.clients)
        if client.up:
            client.kill()
            self.actions["kill client runtime"] += 1
        else:
            client.start()
            self.actions["start client runtime"] += 1
        self.restarted(f"client-{self.clients.index(client)}")

    def kill_server(self, rng: random.Random) -> None:
        self.server.kill()
        self.actions["kill server"] += 1
        if rng.random() < 0.8:
            self.server.start()
            self.actions["restart server"] += 1
        self.restarted(None)

    def restarted(self, via: str | None) -> None:
        """A runtime died or came back: the seats of dead programs behind it are freed only once
        it (or the server, for a dead client runtime) has had its own timeout to notice."""
        for pid, (through, _) in list(self.dead.items()):
            if via is None or through == via:
                self.dead[pid] = (through, deadline())

    # -- the check --

    def check(self) -> None:
        if not self.server.up:
            self.server.start()
            self.actions["restart server"] += 1
            self.restarted(None)
        try:
            sessions = [s for s in self.server.admin("sessions", product=PRODUCT)["sessions"]]
            items = self.server.admin("info", what="items", firm=self.firm)["items"]
        except Exception as exc:  # any failure to read the server is reported, not fatal
            self.violation("server unreadable", repr(exc)[:200])
            return
        if len(sessions) > QUANTITY:
            self.violation("seats over quantity (server)", f"{len(sessions)} sessions of {QUANTITY}")
        valid = sum(1 for p in self.holders() if p.ask("check").get("valid") is True)
        if valid > QUANTITY:
            self.violation("seats over quantity (programs)", f"{valid} programs hold a valid license of {QUANTITY}")
        row = next((r for r in items if r.get("product_code") == PRODUCT), None)
        units = None if row is None else row.get("units_remaining", row.get("units"))
        if isinstance(units, int) and units != UNITS - self.acked_units:
            self.violation("units", f"{units} remain, expected {UNITS - self.acked_units} "
                                    f"({self.acked_units} acknowledged decrements)")
        now = time.monotonic()
        held_pids = {int(s["pid"]) for s in sessions if s.get("pid") is not None}
        for pid, (via, due) in list(self.dead.items()):
            if via != "server" and not self.clients[int(via.split("-")[1])].up:
                continue  # its client runtime is down: the server frees the seat after that runtime's timeout
            if pid not in held_pids:
                del self.dead[pid]
            elif now > due:
                self.violation("dead holder kept its seat", f"pid {pid} (via {via}) still holds a seat {now - due:.1f} s late")
                del self.dead[pid]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="faults, each followed by the full check")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="licentia-faults-") as tmp, B.Stopper() as stopper:
        home = B.make_home(Path(tmp) / "server")
        add_fault_license(home)
        port = B.free_port()
        server = Serve(stopper, home.path, ["--local-port", "0", "--network", "--network-address", B.HOST,
                                            "--network-port", str(port), "--client-timeout", str(CLIENT_TIMEOUT)])
        server.start()
        pin = str(json.loads((home.path / "runtime.json").read_text())["certificate_pin"])
        from licentia.runtime import searchlist

        clients = []
        for i in range(CLIENTS):
            chome = Path(tmp) / f"client-{i}"
            chome.mkdir()
            searchlist.add(chome / "servers.json", f"{B.HOST}:{port}")
            client = Serve(stopper, chome, ["--local-port", "0"])
            client.start()
            clients.append(client)
        world = World(server, clients, Path(tmp) / "programs", f"{B.HOST}:{port}", pin, home.firm_key_file,
                      home.firm, stopper)
        normal = [world.start_program, world.start_program, world.decrement, world.decrement, world.release]
        faults = [world.kill_program, world.kill_program, world.kill_client, world.kill_server]
        for run in range(args.runs):
            for _ in range(rng.randrange(1, 4)):
                rng.choice(normal)(rng)
            rng.choice(faults)(rng)
            world.check()
            if (run + 1) % 50 == 0:
                print(f"  {run + 1} runs, {sum(world.violations.values())} violations, "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr)
        # the last killed programs: wait out their deadline and check once more
        for client in clients:
            if not client.up:
                client.start()
                world.restarted(f"client-{clients.index(client)}")
        if world.dead:
            time.sleep(max(0.0, max(d for _, d in world.dead.values()) - time.monotonic()) + 0.5)
            world.check()
    took = time.monotonic() - started
    print(f"fault runs: {args.runs} runs in {took:.0f} s (seed {seed}); quantity {QUANTITY}, "
          f"client timeout {CLIENT_TIMEOUT:g} s, {CLIENTS} client runtimes")
    print(B.table(["what happened", "count"], sorted(world.actions.items())))
    kinds = ["seats over quantity (server)", "seats over quantity (programs)", "units", "handle reused",
             "dead holder kept its seat", "server unreadable"]
    print(B.table(["invariant", "violations"], [[k, world.violations.get(k, 0)] for k in kinds]))
    for ex in world.examples:
        print(f"  {ex}")
    path = B.write_results("faults", {"runs": args.runs, "seed": seed, "seconds": took, "actions": dict(world.actions),
                                      "violations": dict(world.violations), "examples": world.examples,
                                      "acked_units": world.acked_units})
    print(f"results: {path}")
    return 1 if world.violations else 0


if __name__ == "__main__":
    sys.exit(main())
