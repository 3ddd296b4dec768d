"""A faked runtime cannot fake a license: the SDK checks the vendor's signature on the license
and the container's signature over the program's own challenge."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import licentia
from licentia.core.licenses import License, issue_license
from licentia.crypto import new_signing_key, sign, signing_public_key
from licentia.model import ContainerSerial, ErrorCode, LicentiaError, ProductItem
from licentia.protocol.frames import FrameDecoder, encode
from licentia.sdk.proof import proof_message

FIRM = 10_001
VENDOR_KEY = new_signing_key()
VENDOR_PUBLIC = signing_public_key(VENDOR_KEY)
CONTAINER_KEY = new_signing_key()
SERIAL = ContainerSerial(130, 4242)
Answer = Callable[[dict[str, Any]], dict[str, Any]]


def license_bytes(firm_key: bytes = VENDOR_KEY, container_key: bytes = CONTAINER_KEY, units: int | None = 10) -> bytes:
    lic = License(SERIAL, signing_public_key(container_key), FIRM, 1, ProductItem(product_code=7, units=units), 1)
    return issue_license(lic, firm_key)


def honest(msg: dict[str, Any], *, lic: bytes | None = None, key: bytes = CONTAINER_KEY,
           nonce: bytes | None = None, units: int = 10, said_units: int | None = None) -> dict[str, Any]:
    handle = 5
    proof = sign(key, proof_message(nonce if nonce is not None else msg.get("nonce", b""), handle, str(SERIAL), FIRM, 1,
                                    units, None))
    return {"handle": handle, "container": str(SERIAL), "item": 1, "location": "local", "server": "fake",
            "mode": "per-access", "valid_until": None, "units": units if said_units is None else said_units,
            "license": lic if lic is not None else license_bytes(), "proof": proof}


class FakeRuntime:
    """Speaks the protocol on a Unix socket and answers `access` as told."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        self.released: list[int] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.talk, args=(conn,), daemon=True).start()

    def talk(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        conn.settimeout(10)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for msg in decoder.feed(data):
                    op = msg["op"]
                    if op == "hello":
                        reply = {"version": 1, "server": "fake", "client_id": None, "keepalive": 30}
                    elif op == "access":
                        reply = self.answer(msg)
                    elif op == "release":
                        self.released.append(msg["handle"])
                        reply = {}
                    else:
                        reply = {}
                    conn.sendall(encode({"id": msg["id"], "ok": True, **reply}))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Answer], FakeRuntime]]:
    made: list[FakeRuntime] = []

    def start(answer: Answer) -> FakeRuntime:
        path = tmp_path / f"fake{len(made)}.sock"
        rt = FakeRuntime(path, answer)
        made.append(rt)
        monkeypatch.setenv("LICENTIA_RUNTIME", str(path))
        return rt

    yield start
    for rt in made:
        rt.close()


def take() -> licentia.License:
    return licentia.access(FIRM, 7, firm_key=VENDOR_PUBLIC)


def test_an_honest_answer_is_verified(fake: Callable[[Answer], FakeRuntime]) -> None:
    fake(honest)
    with take() as lic:
        assert lic.info.verified and lic.info.units == 10 and lic.info.container == str(SERIAL)
        assert lic.info.options["product_code"] == 7


@pytest.mark.parametrize(
    "forgery",
    [
        pytest.param(lambda m: honest(m, lic=license_bytes(firm_key=new_signing_key())), id="license-by-another-firm-key"),
        pytest.param(lambda m: honest(m, key=new_signing_key()), id="proof-by-another-container"),
        pytest.param(lambda m: honest(m, nonce=os.urandom(32)), id="replayed-proof-for-another-challenge"),
        pytest.param(lambda m: honest(m, said_units=9), id="units-changed-after-signing"),
        pytest.param(lambda m: {**honest(m), "proof": b""}, id="no-proof"),
        pytest.param(lambda m: {k: v for k, v in honest(m).items() if k != "license"}, id="no-license"),
        pytest.param(lambda m: honest(m, lic=license_bytes(units=5), units=10), id="more-units-than-licensed"),
    ],
)
def test_a_faked_answer_is_refused(fake: Callable[[Answer], FakeRuntime], forgery: Answer) -> None:
    rt = fake(forgery)
    with pytest.raises(LicentiaError) as e:
        take()
    assert e.value.code is ErrorCode.SECURITY_PROBLEM
    assert "verification" in e.value.message and e.value.hint
    assert rt.released == [5]  # whatever it was, the seat is handed back


def test_the_key_must_be_given_or_verification_waived(fake: Callable[[Answer], FakeRuntime], tmp_path: Path) -> None:
    fake(honest)
    with pytest.raises(LicentiaError) as e:
        licentia.access(FIRM, 7)
    assert e.value.code is ErrorCode.INVALID_PARAMETER and "firm_key" in e.value.hint
    with licentia.access(FIRM, 7, verify=False) as lic:
        assert not lic.info.verified and lic.info.options["units"] == 10
    exported = tmp_path / "firm.pub"
    exported.write_text('{"format": "licentia-firm-public-key", "version": 1, "firm_code": 10001, '
                        f'"name": "x", "public_key": "{VENDOR_PUBLIC.hex()}"}}')
    with licentia.access(FIRM, 7, firm_key=str(exported)) as lic:
        assert lic.info.verified
    with pytest.raises(LicentiaError) as e:
        licentia.access(FIRM + 1, 7, firm_key=str(exported))
    assert e.value.code is ErrorCode.INVALID_PARAMETER


def test_import_licentia_stays_cheap() -> None:
    code = (
        "import sys, licentia\n"
        "heavy = [m for m in ('cryptography', 'asyncio', 'ssl', 'licentia.protocol', 'msgpack', 'licentia.model')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "licentia.access\n"
        "heavy = [m for m in ('cryptography', 'asyncio', 'ssl', 'licentia.crypto') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


class Switch:
    """An answer that can be changed between accesses."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def __call__(self, msg: dict[str, Any]) -> dict[str, Any]:
        return self.answer(msg)


def flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(lambda lic: flipped(lic, len(lic) - 1), id="the-genuine-body-with-a-forged-signature"),
        pytest.param(lambda lic: flipped(lic, 20), id="a-changed-body-with-the-genuine-signature"),
        pytest.param(lambda lic: license_bytes(firm_key=new_signing_key()), id="a-license-signed-by-another-key"),
        pytest.param(lambda lic: lic + b"\x00", id="the-genuine-license-extended"),
    ],
)
def test_a_forged_license_is_refused_after_a_genuine_one_was_remembered(
        fake: Callable[[Answer], FakeRuntime], forged: Callable[[bytes], bytes]) -> None:
    genuine = license_bytes()
    switch = Switch(lambda m: honest(m, lic=genuine))
    rt = fake(switch)
    for _ in range(2):  # the second access finds the genuine license remembered
        with take() as lic:
            assert lic.info.verified and lic.info.units == 10
    bad = forged(genuine)
    assert bad != genuine
    switch.answer = lambda m: honest(m, lic=bad)
    for _ in range(2):  # refused every time, not remembered
        with pytest.raises(LicentiaError) as e:
            take()
        assert e.value.code is ErrorCode.SECURITY_PROBLEM
    assert rt.released[-2:] == [5, 5]
    switch.answer = lambda m: honest(m, lic=genuine)
    with take() as lic:
        assert lic.info.verified


def test_a_remembered_license_still_needs_a_fresh_proof(fake: Callable[[Answer], FakeRuntime]) -> None:
    genuine = license_bytes()
    recorded: list[dict[str, Any]] = []

    def record(m: dict[str, Any]) -> dict[str, Any]:
        recorded.append(honest(m, lic=genuine))
        return recorded[-1]

    switch = Switch(record)
    fake(switch)
    with take():
        pass
    switch.answer = lambda m: recorded[0]  # the same license and an earlier, genuine proof
    with pytest.raises(LicentiaError) as e:
        take()
    assert e.value.code is ErrorCode.SECURITY_PROBLEM and "challenge" in e.value.message


def test_the_same_license_under_another_firm_key_is_verified_again(fake: Callable[[Answer], FakeRuntime]) -> None:
    fake(honest)
    with take() as lic:
        assert lic.info.verified
    other = signing_public_key(new_signing_key())
    with pytest.raises(LicentiaError) as e:
        licentia.access(FIRM, 7, firm_key=other)
    assert e.value.code is ErrorCode.SECURITY_PROBLEM


def test_a_changed_key_file_is_read_again(fake: Callable[[Answer], FakeRuntime], tmp_path: Path) -> None:
    fake(honest)
    key_file = tmp_path / "firm.pub"

    def export(public: bytes, mtime_ns: int) -> None:
        key_file.write_text('{"format": "licentia-firm-public-key", "version": 1, "firm_code": 10001, '
                            f'"name": "x", "public_key": "{public.hex()}"}}')
        os.utime(key_file, ns=(mtime_ns, mtime_ns))

    export(signing_public_key(new_signing_key()), 1_000_000_000_000_000_000)
    with pytest.raises(LicentiaError) as e:
        licentia.access(FIRM, 7, firm_key=str(key_file))
    assert e.value.code is ErrorCode.SECURITY_PROBLEM
    export(VENDOR_PUBLIC, 1_000_000_001_000_000_000)  # same size, a later time
    with licentia.access(FIRM, 7, firm_key=str(key_file)) as lic:
        assert lic.info.verified


def test_info_is_read_only_and_offers_the_item(fake: Callable[[Answer], FakeRuntime]) -> None:
    fake(honest)
    with take() as lic:
        info = lic.info
        assert info.item == ProductItem(product_code=7, units=10)
        with pytest.raises(AttributeError):
            info.units = 99
        info.options["units"] = 99  # a program's copy: the remembered license is not touched
        assert lic.info is info and info.replace(units=3).units == 3
    with take() as again:
        assert again.info.options["units"] == 10 and again.info.units == 10


def test_a_verified_start_loads_only_what_it_needs(fake: Callable[[Answer], FakeRuntime], tmp_path: Path) -> None:
    rt = fake(honest)
    key_file = tmp_path / "firm.pub"
    key_file.write_text('{"format": "licentia-firm-public-key", "version": 1, "firm_code": 10001, '
                        f'"name": "x", "public_key": "{VENDOR_PUBLIC.hex()}"}}\n')
    code = (
        "import sys, licentia\n"
        f"lic = licentia.access({FIRM}, 7, firm_key={str(key_file)!r})\n"
        "assert lic.info.verified\n"
        "lic.release()\n"
        # the public modules it needs (socket, threading, json, cryptography's Ed25519) load;
        # nothing of the runtime's side, asyncio, ssl or pathlib does
        "heavy = [m for m in ('licentia.core', 'dataclasses', 'inspect', 'asyncio', 'ssl', 'pathlib', 'hashlib',"
        " 'licentia.model.item') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "LICENTIA_RUNTIME": str(rt.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
