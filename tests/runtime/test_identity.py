"""Who a client is, decided by the server and the kernel, never by what the client says:
the attacks of a client replaying another's id, of another local user stating a
program's PID, and of a terminal-server program hiding its session, each refused; and
a program connected to a network server keeping its seat across the server's restart."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.machine_cli import command as machine_command
from tests.runtime.harness import (
    PROGRAM,
    Procs,
    Program,
    Runtime,
    Vendor,
    base_env,
    make_home,
    wait_for,
)

from licentia.model import ErrorCode, LicentiaError, ProductItem
from licentia.protocol.client import Client
from licentia.protocol.tls import client_context


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _network(port: int = 0) -> tuple[str, ...]:
    return ("--network", "--network-address", "127.0.0.1", "--network-port", str(port), "--client-timeout", "5")


def _server(tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, *flags: str) -> Runtime:
    home = tmp_path / "server"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=2, units=20),
                                   ProductItem(product_code=12, quantity=0)])
    return Runtime(procs, home, root, *(flags or _network()))


def _tls(server: Runtime) -> Client:
    host, port = server.network_address.rsplit(":", 1)
    return Client((host, int(port)), ssl_context=client_context(fingerprint=server.status["certificate_pin"]))


def _code(call: Any) -> int | None:
    try:
        call()
    except LicentiaError as exc:
        return int(exc.code)
    return None


class _Wrapped(Program):
    """A protected program started under `prefix` (a parent process of the test's making)."""

    def __init__(self, procs: Procs, prefix: list[str], env: dict[str, str], **options: Any) -> None:
        self.proc = procs.spawn([*prefix, sys.executable, "-c", PROGRAM, json.dumps(options)], env=base_env(**env),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.first = self.read()


def test_a_client_replaying_another_clients_id_takes_nothing(tmp_path: Path, root: Path, other_root: Path,
                                                            vendor: Vendor, procs: Procs) -> None:
    server = _server(tmp_path, root, vendor, procs)
    victim = Program(procs, other_root, {"LICENTIA_SERVER": server.network_address,
                                         "LICENTIA_SERVER_PIN": server.status["certificate_pin"]},
                     firm_code=vendor.firm, product_code=7, firm_key=str(vendor.public_file))
    assert victim.granted, victim.first
    [row] = server.sessions()
    handle, victim_id = row["handle"], row["client"]

    with _tls(server) as attacker:
        # the victim's id, stated and "proved" with a guessed secret
        reply = attacker.hello({"kind": "program", "client_id": victim_id, "program": "thief",
                                "resume": {"client_id": victim_id, "secret": b"\0" * 32}})
        invalid = int(ErrorCode.INVALID_HANDLE)
        assert _code(lambda: attacker.request("release", handle=handle)) == invalid
        assert _code(lambda: attacker.request("decrement", handle=handle, units=5)) == invalid
        assert reply["client_id"] != victim_id and reply["resumed"] is False
        assert attacker.request("sessions")["sessions"] == []  # nobody else's entries
        assert attacker.request("events")["events"] == []
        assert attacker.request("info", what="containers")["containers"] == []
        assert _code(lambda: attacker.request("admin.release", handle=handle)) == int(ErrorCode.ACCESS_DENIED)
        assert victim.ask("check")["units"] == 20  # nothing was spent
        victim.kill()  # the victim falls silent; the attacker's keep-alives do not keep its seat
        assert attacker.request("keepalive", handles=[handle])["lost"] == [handle]
        wait_for("the victim's seat to time out while the attacker sends keep-alives", lambda: (
            attacker.request("keepalive", handles=[handle]), server.sessions() == [])[1], timeout=30, interval=0.3)
    released = server.logged("the victim's release", lambda e: e["event"] == "release")
    assert [e.get("reason") for e in released] == ["timeout"]


def test_administrators_and_readers_authenticate_with_the_runtimes_tokens(
        tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs) -> None:
    server = _server(tmp_path, root, vendor, procs)
    holder = Program(procs, other_root, {"LICENTIA_SERVER": server.network_address,
                                         "LICENTIA_SERVER_PIN": server.status["certificate_pin"]},
                     firm_code=vendor.firm, product_code=7, firm_key=str(vendor.public_file))
    [row] = server.sessions()
    with _tls(server) as c:
        assert _code(lambda: c.hello({"kind": "admin", "token": "guessed"})) == int(ErrorCode.IDENTITY_REFUSED)
    with _tls(server) as c:
        assert _code(lambda: c.hello({"kind": "admin"})) == int(ErrorCode.ACCESS_DENIED)
    reader_token = (server.home / "reader.token").read_text().strip()
    with _tls(server) as reader:
        assert reader.hello({"kind": "admin", "token": reader_token})["role"] == "reader"
        assert [r["handle"] for r in reader.request("sessions")["sessions"]] == [row["handle"]]
        assert _code(lambda: reader.request("admin.release", handle=row["handle"])) == int(ErrorCode.ACCESS_DENIED)
        assert _code(lambda: reader.request("release", handle=row["handle"])) == int(ErrorCode.INVALID_HANDLE)
    admin_token = (server.home / "admin.token").read_text().strip()
    # the command an administrator types on another machine, the token in a file
    cli = [*machine_command(other_root), "--home", str(tmp_path / "admin-home"), "sessions", "--json",
           "--server", server.network_address, "--token-file", str(server.home / "reader.token")]
    pin = {"LICENTIA_SERVER_PIN": server.status["certificate_pin"]}
    listed = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=base_env(**pin))
    assert [r["handle"] for r in json.loads(listed.stdout)] == [row["handle"]], listed.stderr
    with _tls(server) as admin:
        assert admin.hello({"kind": "admin", "token": admin_token})["role"] == "admin"
        assert admin.request("release", handle=row["handle"])["ok"] is True
    released = server.logged("the admin's release", lambda e: e["event"] == "release")
    assert [e.get("reason") for e in released] == ["admin"]  # the real actor, not the holder
    assert holder.ask("check")["valid"] is False


def test_another_user_stating_a_programs_pid_on_the_loopback_port_is_refused(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=1)])
    rt = Runtime(procs, home, root)
    port = int(rt.status["local_port"])
    victim = Program(procs, root, {"LICENTIA_RUNTIME": f"127.0.0.1:{port}"}, firm_code=vendor.firm,
                     product_code=7, verify=False)
    assert victim.granted
    handle = victim.first["handle"]
    start = int(Path(f"/proc/{victim.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    attack = (
        "import json\nfrom licentia.protocol.client import Client\nfrom licentia.model import LicentiaError\n"
        "def code(f):\n    try:\n        return f()\n    except LicentiaError as exc:\n        return int(exc.code)\n"
        f"c = Client(('127.0.0.1', {port}))\n"
        f"out = [code(lambda: c.hello({{'kind': 'program', 'pid': {victim.pid}, 'pid_start': {start}}}))]\n"
        f"c = Client(('127.0.0.1', {port}))\n"
        "out.append(code(lambda: c.hello({'kind': 'program'})['ok']))\n"
        f"out.append(code(lambda: c.request('release', handle={handle})))\n"
        "print(json.dumps(out))\n")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run([*nobody, sys.executable, "-c", attack], capture_output=True, text=True, timeout=60,
                          env=base_env(PYTHONPATH=os.pathsep.join(sys.path)), cwd="/")
    assert done.returncode == 0, done.stderr
    identity_refused = 1410  # ErrorCode.IDENTITY_REFUSED: the kernel names another process
    assert json.loads(done.stdout) == [identity_refused, True, int(ErrorCode.INVALID_HANDLE)]
    assert [r["pid"] for r in rt.sessions()] == [victim.pid]
    # the kernel names the attacker: a seat it took would be its own, under its own user
    assert victim.ask("check")["valid"] is True


@pytest.mark.parametrize("marker", ["parent name", "parent environment"])
def test_a_terminal_server_program_that_hides_its_session_is_still_one(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, marker: str) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=12, quantity=0)])
    rt = Runtime(procs, home, root)
    shell = shutil.which("sh")
    assert shell is not None
    env = {"LICENTIA_HOME": str(home)}
    if marker == "parent name":
        parent = tmp_path / "xrdp-sesman"  # a session manager's name on the program's parent
        shutil.copy(shell, parent)
        shell = str(parent)
    else:
        env["XRDP_SESSION"] = "1"  # in the parent's environment only
    # the program unsets the marker and says it is a local one; the shell stays its parent
    hide = [shell, "-c", 'env -u XRDP_SESSION LICENTIA_SESSION=local "$@"; exit $?', "sh"]
    hidden = _Wrapped(procs, hide, env, firm_code=vendor.firm, product_code=12, verify=False)
    assert hidden.first.get("error") == int(ErrorCode.TERMINAL_SESSION_DENIED), hidden.first
    plain = _Wrapped(procs, [shutil.which("sh") or "sh", "-c", '"$@"; exit $?', "sh"], {"LICENTIA_HOME": str(home)},
                     firm_code=vendor.firm, product_code=12, verify=False)
    assert plain.granted, plain.first  # the same program in a local session
    del rt


def test_a_program_on_a_network_server_keeps_its_seat_across_the_servers_restart(
        tmp_path: Path, root: Path, other_root: Path, vendor: Vendor, procs: Procs) -> None:
    port = _free_port()
    server = _server(tmp_path, root, vendor, procs, *_network(port))
    prog = Program(procs, other_root, {"LICENTIA_SERVER": server.network_address,
                                       "LICENTIA_SERVER_PIN": server.status["certificate_pin"]},
                   firm_code=vendor.firm, product_code=7, firm_key=str(vendor.public_file))
    assert prog.granted
    [before] = server.sessions()
    server.stop()
    server.start()
    assert prog.ask("check")["valid"] is True  # it proved its identity: the seat is its own again
    assert prog.ask("decrement 2") == {"units": 18}
    [after] = server.sessions()
    assert (after["handle"], after["client"]) == (before["handle"], before["client"])
    prog.kill()
    wait_for("the dead program's seat to time out", lambda: server.sessions() == [], timeout=30)
