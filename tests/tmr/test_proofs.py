"""Proofs of a TMR license when the upstream that signed them dies: a program that verifies
(the SDK's default) keeps its license, proved by another constituent that the vendor-signed
license names (docs/tmr.md, "Proofs")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.runtime.harness import Program, Runtime, machine, wait_for
from tests.tmr.conftest import _need_etcd
from tests.tmr.system import UNITS, System, access, kill_upstream, tmr_system

from licentia.sdk.verify import verify_grant, verify_license


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    _need_etcd()
    with tmr_system(tmp_path) as s:
        yield s


def test_a_verifying_program_keeps_its_license_when_the_upstream_that_proved_it_dies(system: System) -> None:
    s = system
    fe1, fe2 = s.front_ends
    from licentia.runtime import searchlist

    other_root = machine(s.tmp / "client-machine")
    client_home = s.tmp / "client"
    for fe in (fe1, fe2):  # the search list names both twins
        searchlist.add(client_home / "servers.json", fe.address)
    Runtime(s.procs, client_home, other_root)
    env = {"LICENTIA_HOME": str(client_home)}
    options = {"firm_code": 10_001, "product_code": 9, "firm_key": str(s.vendor.public_file)}
    prog = Program(s.procs, other_root, env, **options)
    assert "error" not in prog.first, prog.first
    # proved by the first upstream's constituent: the program pinned that container's license
    assert prog.first["verified"] and prog.first["container"] == s.serials[0], prog.first
    assert prog.ask("decrement 2") == {"units": UNITS - 2}

    kill_upstream(s, 0)  # the upstream that signed every proof so far, and its etcd member
    # the held license's next verified decrement and check (what its watcher's keep-alive
    # sends) are proved by another constituent, which the license the program holds names
    assert prog.ask("decrement 1") == {"units": UNITS - 3}
    assert prog.ask("check") == {"events": [], "valid": True, "units": UNITS - 3}
    # a new verified access: granted, and proved by a constituent still alive
    second = Program(s.procs, other_root, env, **options)
    assert "error" not in second.first, second.first
    assert second.first["verified"] and second.first["container"] in s.serials[1:], second.first

    # what the front end answers a challenge with, read directly: another constituent's
    # license and signature, which verify for the firm
    firm_key = s.vendor.public
    c = fe2.client("client-runtime-direct")
    nonce = os.urandom(32)
    reply = access(c, 7, nonce=nonce)
    verified = verify_grant(firm_key, 10_001, 9, nonce, reply)
    assert verified.serial in s.serials[1:] and reply["virtual_container"] == fe2.status["serial"]
    named = verify_license(firm_key, 10_001, reply["license"]).item["tmr_constituents"]
    assert sorted(serial for serial, _ in named) == sorted(s.serials)
    c.close()

    # through the twin as well: the front end the client runtime used dies, its seats move,
    # and the program's verified decrement goes on (proved by a living constituent)
    fe1.kill()
    assert prog.ask("decrement 1") == {"units": UNITS - 4}
    assert wait_for("the program's check through the twin", lambda: prog.ask("check")["valid"])
    assert prog.ask("release") == {"released": True}
    assert second.ask("release") == {"released": True}
