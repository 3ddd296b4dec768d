"""Proof keys: a program's warm accesses on one connection are checked with MACs under a
key the container signed for that connection, not with an Ed25519 signature each; a new
connection starts a new exchange; a MAC that is wrong, replayed or without an exchange is
refused like a bad signature (109)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from tests.runtime.harness import Procs, Runtime, Vendor, machine, make_home, open_container
from tests.sdk.serving import Env, serve
from tests.sdk.test_sdk_fake_runtime import (
    CONTAINER_KEY,
    FIRM,
    SERIAL,
    Answer,
    FakeRuntime,
    fake,
    honest,
    take,
)

import licentia
from licentia.crypto import sign
from licentia.crypto.recipes import KeyAgreement, MacKey
from licentia.model import ErrorCode, LicentiaError, ProductItem
from licentia.runtime.proofs import ProofKeys as RuntimeProofKeys
from licentia.sdk import verify
from licentia.sdk.proof import proof_key_info, proof_message, proof_message_kx
from licentia.sdk.verify import ProofKeys, SignedLicense, verify_license, verify_proof

__all__ = ["fake"]  # the fake runtime's fixture, used here too


class Signatures:
    """Counts the Ed25519 verifications the SDK makes (the real check still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = verify._signed_by

        def counted(public_key: bytes, data: bytes, signature: bytes) -> bool:
            self.count += 1
            return real(public_key, data, signature)

        monkeypatch.setattr(verify, "_signed_by", counted)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from serve(tmp_path_factory.mktemp("proof-keys"), [ProductItem(product_code=7, quantity=100, units=1000)])


def link_keys(lic: licentia.License) -> ProofKeys:
    keys = lic._link.keys
    assert keys is not None
    return keys


def test_warm_accesses_on_one_link_are_checked_with_macs(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    signatures = Signatures(monkeypatch)
    with env.take() as first:
        keys = link_keys(first)
        assert list(keys.macs) == [env.serial]
    signatures.count = 0
    for _ in range(5):
        with env.take() as lic:
            assert lic.info.verified and lic.info.container == env.serial and link_keys(lic) is keys
            before = lic.info.units
            assert lic.decrement(2) == before - 2 and lic.info.units == before - 2
            assert lic.check() == [] and lic.valid
    assert signatures.count == 0  # no Ed25519 verification once the key is agreed
    assert env.runtime.sessions() == []


def test_asyncio_links_agree_their_own_key(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    signatures = Signatures(monkeypatch)

    async def main() -> tuple[int, int]:
        async with licentia.access_async(env.vendor.firm, 7, firm_key=env.vendor.public_file) as lic:
            await lic.decrement(1)
        opened = signatures.count
        for _ in range(3):
            async with licentia.access_async(env.vendor.firm, 7, firm_key=env.vendor.public_file) as lic:
                assert lic.info.verified
                await lic.decrement(1)
                assert await lic.check() == []
        return opened, signatures.count - opened

    opened, warm = asyncio.run(main())
    assert opened == 1 and warm == 0  # the container's signature once (the license is remembered), then MACs


def test_threads_sharing_a_fresh_link_all_verify(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests sent before the key was agreed get signatures, so none is refused."""
    monkeypatch.setenv("LICENTIA_RUNTIME", f"127.0.0.1:{env.runtime.status['local_port']}")  # a link of its own
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work() -> None:
        try:
            start.wait(10)
            for _ in range(10):
                with env.take() as lic:
                    assert lic.info.verified
                    lic.check()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_a_reconnect_after_a_runtime_restart_starts_a_new_exchange(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    make_home(home, root, vendor, [ProductItem(product_code=7, quantity=5)])
    rt = Runtime(procs, home, root)
    monkeypatch.setenv("LICENTIA_HOME", str(home))
    monkeypatch.delenv("LICENTIA_RUNTIME", raising=False)
    signatures = Signatures(monkeypatch)

    def take() -> licentia.License:
        return licentia.access(vendor.firm, 7, firm_key=vendor.public_file)

    with take() as lic:
        old = link_keys(lic)
    with take():
        pass
    rt.stop()
    rt.start()
    signatures.count = 0
    with take() as lic:
        new = link_keys(lic)
        assert lic.info.verified
    assert new is not old and new.public != old.public and signatures.count == 1  # a signed exchange
    with take() as lic:
        assert link_keys(lic) is new
        assert lic.check() == []
    assert signatures.count == 1


def test_a_verified_start_with_an_exchange_loads_only_what_it_needs(env: Env) -> None:
    code = (
        "import sys, licentia\n"
        "for _ in range(2):\n"
        f"    lic = licentia.access({env.vendor.firm}, 7, firm_key={str(env.vendor.public_file)!r})\n"
        "    assert lic.info.verified\n"
        "    lic.decrement(1)\n"
        "    lic.release()\n"
        "from licentia.sdk.access import _links\n"
        "(link,) = _links.values()\n"
        "assert link.keys is not None and link.keys.macs\n"
        # the public modules the exchange needs (hmac, hashlib, cryptography's X25519 and HKDF)
        # load; nothing of the runtime's side, asyncio or ssl does
        "heavy = [m for m in ('licentia.core', 'asyncio', 'ssl', 'dataclasses', 'licentia.model.item')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LICENTIA_HOME": str(env.home)})
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------------- a faked runtime


class Exchanging:
    """A runtime faked around the container key: it answers as the genuine one would
    (signed exchange, then MACs), unless `forge` changes an answer."""

    def __init__(self, forge: Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]] | None = None,
                 key: bytes = CONTAINER_KEY) -> None:
        self.forge = forge
        self.key = key
        self.mac: MacKey | None = None
        self.kx: bytes | None = None
        self.count = 0
        self.answers: list[dict[str, Any]] = []

    def __call__(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        nonce, handle, serial = msg["nonce"], 5, str(SERIAL)
        answer = honest(msg)
        del answer["proof"]
        if self.mac is not None and serial in msg.get("keyed", ()):
            answer["mac"] = self.mac.tag(proof_message(nonce, handle, serial, FIRM, 1, 10, None))
        else:
            exchange = KeyAgreement()
            self.kx = exchange.public
            self.mac = MacKey(exchange.agree(msg["kx"], proof_key_info(msg["kx"], exchange.public, serial)))
            answer["proof"] = sign(self.key, proof_message_kx(nonce, handle, serial, FIRM, 1, 10, None, msg["kx"],
                                                              exchange.public))
            answer["kx"] = exchange.public
        if self.forge is not None:
            answer = self.forge(answer, msg, self.count)
        self.answers.append(answer)
        return answer


def flip(data: bytes, index: int = 3) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_an_honest_exchange_then_macs_verify(fake: Callable[[Answer], FakeRuntime]) -> None:
    runtime = Exchanging()
    fake(runtime)
    for _ in range(3):
        with take() as lic:
            assert lic.info.verified and lic.info.units == 10
    assert ["proof" in a for a in runtime.answers] == [True, False, False]


def later(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any], dict[str, Any], int],
                                                                          dict[str, Any]]:
    """Forge the answers after the first (the exchange is honest)."""
    return lambda answer, msg, count: change(answer) if count > 1 else answer


@pytest.mark.parametrize("forge", [
    pytest.param(later(lambda a: {**a, "mac": flip(a["mac"])}), id="a-flipped-mac-byte"),
    pytest.param(later(lambda a: {**a, "mac": a["mac"][:-1]}), id="a-short-mac"),
    pytest.param(later(lambda a: {**a, "units": 9}), id="units-changed-after-the-mac"),
    pytest.param(later(lambda a: {**a, "proof": b"\x00" * 64}), id="a-mac-and-a-signature"),
    pytest.param(lambda a, m, n: {k: v for k, v in a.items() if k not in ("proof", "kx")} | {"mac": os.urandom(32)},
                 id="a-mac-with-no-exchange"),
    pytest.param(lambda a, m, n: {**a, "kx": KeyAgreement().public} if "kx" in a else a,
                 id="the-runtime-key-swapped-after-signing"),
    pytest.param(lambda a, m, n: {k: v for k, v in a.items() if k != "kx"}, id="the-runtime-key-left-out"),
])
def test_a_forged_mac_or_exchange_is_refused(fake: Callable[[Answer], FakeRuntime],
                                             forge: Callable[[dict[str, Any], dict[str, Any], int],
                                                             dict[str, Any]]) -> None:
    runtime = Exchanging(forge)
    rt = fake(runtime)
    try:
        for _ in range(2):
            with take():
                pass
        raise AssertionError("a forged answer was accepted")
    except LicentiaError as exc:
        assert exc.code is ErrorCode.SECURITY_PROBLEM and "verification" in exc.message
    assert rt.released[-1] == 5  # the seat is handed back


def test_an_exchange_signed_by_another_key_is_refused(fake: Callable[[Answer], FakeRuntime]) -> None:
    from licentia.crypto import new_signing_key

    fake(Exchanging(key=new_signing_key()))
    with pytest.raises(LicentiaError) as e:
        take()
    assert e.value.code is ErrorCode.SECURITY_PROBLEM


def test_a_replayed_mac_answer_is_refused(fake: Callable[[Answer], FakeRuntime]) -> None:
    runtime = Exchanging()
    replay: dict[str, Any] = {}

    def forge(answer: dict[str, Any], msg: dict[str, Any], count: int) -> dict[str, Any]:
        if count == 2:
            replay.update(answer)
        return dict(replay) if count > 2 else answer

    runtime.forge = forge
    fake(runtime)
    for _ in range(2):
        with take() as lic:
            assert lic.info.verified
    with pytest.raises(LicentiaError) as e:  # the second answer, again, for a new challenge
        take()
    assert e.value.code is ErrorCode.SECURITY_PROBLEM and "MAC" in e.value.message


def test_plain_signatures_are_still_accepted_from_a_runtime_without_proof_keys(
        fake: Callable[[Answer], FakeRuntime]) -> None:
    fake(honest)  # signs every answer, ignores `kx` (a token, a server relayed, an older runtime)
    for _ in range(2):
        with take() as lic:
            assert lic.info.verified and link_keys(lic).macs == {}


# ---------------------------------------------------------------------------- the property


class Parts:
    def __init__(self, tmp: Path) -> None:
        root = machine(tmp / "machine")
        vendor = Vendor(tmp / "vendor")
        serial = make_home(tmp / "home", root, vendor, [ProductItem(product_code=7, units=500,
                                                                    expires_at=2_000_000_000)])
        self.content = open_container(tmp / "home", root, serial).read()
        entry = self.content.firms[vendor.firm].items[1]
        self.license = verify_license(vendor.public, vendor.firm, entry.license)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Parts:
    return Parts(tmp_path_factory.mktemp("property"))


FIELDS = ("nonce", "handle", "units", "valid_until", "tag", "runtime_kx", "serial", "firm_code", "item_id",
          "other_keys", "dropped")


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(("mac", "signed")), field=st.sampled_from(FIELDS), handle=st.integers(1, 2**41),
       units=st.none() | st.integers(0, 500), until=st.none() | st.integers(0, 2_000_000_000),
       delta=st.integers(1, 1000), bit=st.integers(0, 255))
def test_any_altered_field_is_refused(parts: Parts, kind: str, field: str, handle: int, units: int | None,
                                      until: int | None, delta: int, bit: int) -> None:
    """Whatever one thing differs between what the runtime proved and what the program
    checks, the answer is refused; unaltered, it verifies."""
    runtime, program = RuntimeProofKeys(), ProofKeys()
    lic, content = parts.license, parts.content
    serial = lic.serial
    firm, item = lic.firm_code, lic.item_id

    def ask(keys: ProofKeys) -> tuple[bytes, dict[str, Any]]:
        nonce = os.urandom(32)
        msg = {"nonce": nonce, **keys.fields()}
        return nonce, {"handle": handle, "units": units, "valid_until": until,
                       **runtime.prove(content, msg, handle, firm, item, units, until)}

    if kind == "mac":
        nonce, opening = ask(program)
        verify_proof(lic, nonce, opening, program)
    nonce, reply = ask(program)
    assert ("mac" in reply) is (kind == "mac") and ("kx" in reply) is (kind == "signed")
    tag_name = "mac" if kind == "mac" else "proof"
    check_lic, check_nonce, keys = lic, nonce, program
    altered = dict(reply)
    if field == "nonce":
        check_nonce = flip(nonce, bit % 32)
    elif field in ("handle", "units", "valid_until"):
        value = altered[field]
        altered[field] = delta if value is None else value + delta
    elif field == "tag":
        altered[tag_name] = flip(reply[tag_name], bit % len(reply[tag_name]))
    elif field == "runtime_kx":
        altered["kx"] = flip(reply["kx"], bit % 32) if kind == "signed" else ProofKeys().public
    elif field in ("serial", "firm_code", "item_id"):
        changed = {"serial": f"{serial}0", "firm_code": firm + delta, "item_id": item + delta}
        check_lic = SignedLicense(changed["serial"] if field == "serial" else serial,
                                  changed["firm_code"] if field == "firm_code" else firm,
                                  changed["item_id"] if field == "item_id" else item, lic.item, lic.container_key)
    elif field == "other_keys":
        keys = ProofKeys()  # another connection's keys
    else:
        del altered[tag_name]
    with pytest.raises(LicentiaError) as e:
        verify_proof(check_lic, check_nonce, altered, keys)
    assert e.value.code is ErrorCode.SECURITY_PROBLEM
    assert verify_proof(lic, nonce, reply, program).units == units


def test_a_token_style_signature_without_kx_verifies_with_keys_offered(parts: Parts) -> None:
    """Token containers and relayed answers sign as before, even when the program offered `kx`."""
    from licentia.runtime.proofs import make_proof

    nonce = os.urandom(32)
    proof = make_proof(parts.content, nonce, 9, parts.license.firm_code, parts.license.item_id, 3, None)
    keys = ProofKeys()
    assert verify_proof(parts.license, nonce, {"handle": 9, "units": 3, "proof": proof}, keys).units == 3
    assert keys.macs == {}
