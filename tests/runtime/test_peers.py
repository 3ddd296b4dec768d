"""What the kernel says about a local peer (licentia.runtime.peers), with real processes and
sockets: the process at the other end of a loopback connection, and the session a process's
ancestry puts it in; and the rule that a program's statement only narrows its session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from licentia.model import SessionKind
from licentia.runtime.peers import (
    loopback_peer,
    narrower,
    process_session,
    socket_inode,
    table_inode,
)

_CONNECT = "import socket, sys\ns = socket.create_connection((sys.argv[1], int(sys.argv[2])))\nsys.stdin.read()\n"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_kernel_names_the_process_at_the_other_end_of_a_loopback_connection(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} here")
    with listener:
        listener.listen(1)
        child = subprocess.Popen([sys.executable, "-c", _CONNECT, host, str(listener.getsockname()[1])],
                                 stdin=subprocess.PIPE)
        try:
            conn, _ = listener.accept()
            with conn:
                peer, local = conn.getpeername()[:2], conn.getsockname()[:2]
                assert loopback_peer(peer, local) == (child.pid, os.getuid())
                # a stated PID that does not hold the socket is not taken
                assert loopback_peer(peer, local, hint=os.getpid()) == (child.pid, os.getuid())
                assert loopback_peer(peer, local, hint=child.pid) == (child.pid, os.getuid())
                assert loopback_peer((peer[0], 1), local) is None  # no such connection
                # sock_diag and the /proc/net table name the same socket
                assert socket_inode(peer, local) == table_inode(peer, local) is not None
        finally:
            child.kill()
            child.wait()


def test_a_remote_shell_among_the_ancestors_makes_a_remote_session(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    sshd = tmp_path / "sshd"
    shutil.copy(sh, sshd)
    parent = subprocess.Popen([str(sshd), "-c", "sleep 60; exit 0"], env={"PATH": "/usr/bin:/bin"})
    try:
        child = _child_of(parent.pid)
        assert process_session(child, Path("/"))[0] is SessionKind.REMOTE_DESKTOP
        assert process_session(parent.pid, Path("/"))[0] is SessionKind.LOCAL  # its own parent is the test
    finally:
        parent.kill()
        parent.wait()


def _child_of(pid: int) -> int:
    import time

    for _ in range(200):  # the shell forks `sleep` at once
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError("the shell started no child")


_KINDS = st.sampled_from(list(SessionKind))
_RANK = {SessionKind.LOCAL: 0, SessionKind.REMOTE_DESKTOP: 1, SessionKind.TERMINAL_SERVER: 2}


@given(_KINDS, _KINDS, st.text(max_size=5), st.text(max_size=5))
def test_a_stated_session_narrows_and_never_widens(found: SessionKind, stated: SessionKind, fid: str,
                                                   sid: str) -> None:
    kind, _ = narrower((found, fid), (stated, sid))
    assert _RANK[kind] == max(_RANK[found], _RANK[stated])
    if _RANK[stated] <= _RANK[found]:
        assert narrower((found, fid), (stated, sid)) == (found, fid)
