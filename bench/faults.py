"""Fault runs: programs, client runtimes and the license server killed at random, with the
invariants checked after every run.

One network server (`licentia runtime serve --network`) holds a license of QUANTITY seats
with a unit counter. Around it: programs talking to it directly (`LICENTIA_SERVER`),
client runtimes, and programs talking through those. A *run* is 3-8 steps of normal
traffic (start a program while fewer than POPULATION run, and now and then one more than
the seats allow; spend a unit; check; release), then one fault, drawn by weight: SIGKILL of
a program (6), of a client runtime with the programs on its machine (2), of the server,
restarted at once most times (1). A client runtime killed in one run starts again in the
next. Programs live across runs, so most steps are decrements and checks of licenses
held; a dead program's seat comes back after the client timeout, a few runs later. Then
the full check:

- **seats**: never more seats held than QUANTITY, by the server's view (`sessions`) and by
  the programs' own (the live programs whose `check` says their license is valid);
- **units**: the server's unit counter equals the start minus every acknowledged decrement
  (no acknowledged decrement lost, none counted twice), give or take the decrements that
  got no answer (their program or runtime was killed while asked);
- **handles**: no handle is handed out twice by the same runtime, across its crashes too;
- **dead holders**: the seat of a killed program is gone from the server within the
  client timeout (plus the reap interval and one second of slack), counted from its death
  or from the last restart of a runtime on its path, whichever is later.

The checker is a pure function of what was observed (`judge`); `--self-test` feeds it
observations with each kind of violation and fails unless it reports every one.

    .venv/bin/python bench/faults.py --runs 1000     # about 20 minutes on the loaded 2-core machine
    .venv/bin/python bench/faults.py --runs 30 --seed 7
    .venv/bin/python bench/faults.py --self-test     # the checker catches what it must
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B

PRODUCT = 3
QUANTITY = 8
POPULATION = 6  # programs kept running; a start beyond it is drawn now and then, past QUANTITY too
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
class Observed:
    """What the check saw, for `judge`."""

    now: float  # monotonic
    sessions: list[dict[str, Any]]  # the server's sessions of PRODUCT
    valid_programs: int  # live programs whose `check` said valid
    units: int | None  # the server's unit counter, when it says one
    acked_units: int  # decrements answered
    unanswered_units: int  # decrements asked whose answer never came
    dead: dict[int, tuple[str, float]]  # killed program pid -> (its path, deadline)
    clients_up: dict[str, bool]  # "client-N" -> running


def judge(o: Observed) -> tuple[list[tuple[str, str]], set[int]]:
    """The invariants over one observation: the violations (kind, what), and the dead
    programs settled (their seat is gone, or reported late) that need no more checking."""
    found: list[tuple[str, str]] = []
    if len(o.sessions) > QUANTITY:
        found.append(("seats over quantity (server)", f"{len(o.sessions)} sessions of {QUANTITY}"))
    if o.valid_programs > QUANTITY:
        found.append(("seats over quantity (programs)",
                      f"{o.valid_programs} programs hold a valid license of {QUANTITY}"))
    if o.units is not None:
        high = UNITS - o.acked_units
        low = high - o.unanswered_units
        if not low <= o.units <= high:
            found.append(("units", f"{o.units} remain, expected {high} ({o.acked_units} acknowledged "
                                    f"decrements, {o.unanswered_units} unanswered)"))
    settled: set[int] = set()
    held_pids = {int(s["pid"]) for s in o.sessions if s.get("pid") is not None}
    for pid, (via, due) in o.dead.items():
        if via != "server" and not o.clients_up.get(via, False):
            continue  # its client runtime is down: the server frees the seat after that runtime's timeout
        if pid not in held_pids:
            settled.add(pid)
        elif o.now > due:
            found.append(("dead holder kept its seat", f"pid {pid} (via {via}) still holds a seat "
                                                       f"{o.now - due:.1f} s late"))
            settled.add(pid)
    return found, settled


def handle_reused(seen: set[int], handle: int) -> bool:
    """Note `handle` as given by a runtime; True when it gave it before."""
    if handle in seen:
        return True
    seen.add(handle)
    return False


KINDS = ["seats over quantity (server)", "seats over quantity (programs)", "units", "handle reused",
         "dead holder kept its seat", "server unreadable"]


def self_test() -> int:
    """Feed `judge` observations with each kind of violation, and one without: it must say so."""
    base = Observed(now=100.0, sessions=[{"pid": 1}, {"pid": 2}], valid_programs=2, units=UNITS - 5,
                    acked_units=5, unanswered_units=0, dead={3: ("server", 99.0)}, clients_up={"client-0": True})
    cases: list[tuple[str, Observed]] = [
        ("", base),
        ("seats over quantity (server)", replace(base, sessions=[{"pid": 10 + i} for i in range(QUANTITY + 1)])),
        ("seats over quantity (programs)", replace(base, valid_programs=QUANTITY + 1)),
        ("units", replace(base, units=UNITS - 4)),  # an acknowledged decrement lost
        ("units", replace(base, units=UNITS - 6)),  # one counted twice
        ("dead holder kept its seat", replace(base, dead={1: ("server", 99.0)})),
        ("dead holder kept its seat", replace(base, dead={2: ("client-0", 50.0)})),
    ]
    failed = 0
    for want, obs in cases:
        got = {kind for kind, _ in judge(obs)[0]}
        if got != ({want} if want else set()):
            print(f"self-test: expected {want or 'no violation'}, the checker said {sorted(got) or 'none'}")
            failed += 1
    # what is allowed must pass: an unanswered decrement may have been spent; a dead
    # holder still within its deadline, or behind a client runtime that is down, is not late
    allowed = [replace(base, units=UNITS - 6, unanswered_units=1),
               replace(base, dead={1: ("server", 101.0)}),
               replace(base, dead={1: ("client-1", 50.0)})]
    for obs in allowed:
        if judge(obs)[0]:
            print(f"self-test: a violation reported where none is: {judge(obs)[0]}")
            failed += 1
    seen: set[int] = set()
    if handle_reused(seen, 7) or not handle_reused(seen, 7):
        print("self-test: a handle given twice is not caught")
        failed += 1
    print(f"self-test: {len(cases) + len(allowed) + 1 - failed} of {len(cases) + len(allowed) + 1} cases as expected")
    return 1 if failed else 0


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
    unanswered_units: int = 0
    handles: dict[str, set[int]] = field(default_factory=dict)
    violations: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    run: int = 0

    def violation(self, kind: str, text: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {text}")
            print(f"  run {self.run}, violation: {kind}: {text}", file=sys.stderr)

    # -- actions --

    def start_program(self, rng: random.Random) -> None:
        if len(self.holders()) >= POPULATION and rng.random() > 0.1:
            self.decrement(rng)  # enough programs run: spend a unit instead
            return
        ups = [i for i, c in enumerate(self.clients) if c.up]
        choice = rng.choice([*ups, CLIENTS])
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
            if handle_reused(self.handles.setdefault(key, set()), prog.handle):
                self.violation("handle reused", f"{issuer} gave handle {prog.handle} a second time")
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
            if reply.get("error") in (-1, -2):
                self.unanswered_units += 1  # it may have been spent: the check allows either
            self.actions[f"decrement {reply.get('error')}"] += 1

    def check_one(self, rng: random.Random) -> None:
        live = self.holders()
        if live:
            valid = rng.choice(live).ask("check").get("valid") is True
            self.actions["check valid" if valid else "check not valid"] += 1

    def release(self, rng: random.Random) -> None:
        live = self.holders()
        if not live:
            return
        prog = rng.choice(live)
        prog.ask("release")
        self.stopper.stop(prog.proc)
        self.programs.remove(prog)
        self.actions["release"] += 1

    def kill(self, prog: Program) -> None:
        prog.proc.send_signal(signal.SIGKILL)
        prog.proc.wait(15)
        self.stopper.stop(prog.proc)  # its pipes closed: a thousand runs leave no descriptors behind
        self.programs.remove(prog)
        self.dead[prog.proc.pid] = (prog.via, deadline())

    def kill_program(self, rng: random.Random) -> None:
        live = self.holders()
        if not live:
            return
        self.kill(rng.choice(live))
        self.actions["kill program"] += 1

    def kill_client(self, rng: random.Random) -> None:
        """A client runtime's machine goes down: the runtime and its programs are SIGKILLed."""
        i = rng.randrange(CLIENTS)
        client = self.clients[i]
        if not client.up:
            return
        client.kill()
        for prog in [p for p in self.holders() if p.via == f"client-{i}"]:
            self.kill(prog)
            self.actions["kill program (its machine)"] += 1
        self.actions["kill client runtime"] += 1
        self.restarted(f"client-{i}")

    def start_clients(self) -> None:
        for i, client in enumerate(self.clients):
            if not client.up:
                client.start()
                self.actions["start client runtime"] += 1
                self.restarted(f"client-{i}")

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
        valid = sum(1 for p in self.holders() if p.ask("check").get("valid") is True)
        row = next((r for r in items if r.get("product_code") == PRODUCT), None)
        units = None if row is None else row.get("units_remaining", row.get("units"))
        observed = Observed(now=time.monotonic(), sessions=sessions, valid_programs=valid,
                            units=units if isinstance(units, int) else None, acked_units=self.acked_units,
                            unanswered_units=self.unanswered_units, dead=dict(self.dead),
                            clients_up={f"client-{i}": c.up for i, c in enumerate(self.clients)})
        found, settled = judge(observed)
        for kind, text in found:
            self.violation(kind, text)
        for pid in settled:
            del self.dead[pid]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="faults, each followed by the full check")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--self-test", action="store_true", help="check the checker on made-up observations")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
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
        normal = [world.start_program, world.decrement, world.check_one, world.release]
        normal_weights = [3, 5, 1, 1]
        faults = [world.kill_program, world.kill_client, world.kill_server]
        fault_weights = [6, 2, 1]
        for run in range(args.runs):
            world.run = run
            world.start_clients()
            for _ in range(rng.randint(3, 8)):
                rng.choices(normal, normal_weights)[0](rng)
            rng.choices(faults, fault_weights)[0](rng)
            world.check()
            if (run + 1) % 50 == 0:
                print(f"  {run + 1} runs, {world.actions['grant']} grants, {sum(world.violations.values())} "
                      f"violations, {time.monotonic() - started:.0f} s", file=sys.stderr)
        # the last killed programs: wait out their deadline and check once more
        world.start_clients()
        if world.dead:
            time.sleep(max(0.0, max(d for _, d in world.dead.values()) - time.monotonic()) + 0.5)
            world.check()
    took = time.monotonic() - started
    print(f"fault runs: {args.runs} runs in {took:.0f} s (seed {seed}); quantity {QUANTITY}, {POPULATION} programs "
          f"kept running, client timeout {CLIENT_TIMEOUT:g} s, {CLIENTS} client runtimes")
    print(B.table(["what happened", "count"], sorted(world.actions.items())))
    print(B.table(["invariant", "violations"], [[k, world.violations.get(k, 0)] for k in KINDS]))
    for ex in world.examples:
        print(f"  {ex}")
    path = B.write_results("faults", {"runs": args.runs, "seed": seed, "seconds": took, "actions": dict(world.actions),
                                      "violations": dict(world.violations), "examples": world.examples,
                                      "acked_units": world.acked_units, "unanswered_units": world.unanswered_units})
    print(f"results: {path}")
    return 1 if world.violations else 0


if __name__ == "__main__":
    sys.exit(main())
