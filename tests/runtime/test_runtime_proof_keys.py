"""Proof keys on the wire: a real runtime signs the first answer of a connection for a
container over both ephemeral exchange keys, then answers with MACs where the program
says it holds the key; without `kx` (or with an unusable one) it signs as it always did."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.runtime.harness import Procs, Runtime, Vendor, make_home, wait_for
from tests.runtime.test_runtime_tokens import get, store, token_container, token_runtime
from tests.tokens import TokenStore

from licentia.model import ErrorCode, LicentiaError, ProductItem
from licentia.protocol.client import Client
from licentia.sdk.connect import process_start
from licentia.sdk.verify import ProofKeys, load_firm_key, verify_grant, verify_proof

__all__ = ["store"]  # the SoftHSM2 token store fixture, used here too


def hello(c: Client) -> None:
    c.hello({"kind": "program", "program": "proof-keys", "pid": os.getpid(), "pid_start": process_start()})


def test_the_first_answer_signs_the_exchange_and_later_ones_carry_macs(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs) -> None:
    home = tmp_path / "home"
    serial = make_home(home, root, vendor, [ProductItem(product_code=7, quantity=50, units=100)])
    rt = Runtime(procs, home, root)
    firm_key = load_firm_key(vendor.public_file)
    ask = {"firm": vendor.firm, "product": 7}

    def access(c: Client, keys: ProofKeys | None, **extra: Any) -> tuple[dict[str, Any], bytes]:
        nonce = os.urandom(32)
        fields = keys.fields() if keys is not None else {}
        fields.update(extra)
        reply = c.request("access", **ask, nonce=nonce, **fields)
        verify_grant(firm_key, vendor.firm, 7, nonce, reply, keys)
        return reply, nonce

    with Client(rt.socket) as c:
        hello(c)
        keys = ProofKeys()
        first, _ = access(c, keys)
        assert "mac" not in first and len(first["proof"]) == 64 and len(first["kx"]) == 32
        assert list(keys.macs) == [serial]
        runtime_kx = first["kx"]

        warm, warm_nonce = access(c, keys)
        assert "proof" not in warm and "kx" not in warm and len(warm["mac"]) == 32

        # sent before the key was agreed (no `keyed`): signed again, over the same runtime key
        again, _ = access(c, keys, keyed=[])
        assert "mac" not in again and again["kx"] == runtime_kx

        held = verify_grant(firm_key, vendor.firm, 7, warm_nonce, warm, keys)
        nonce = os.urandom(32)
        checked = c.request("check", handle=warm["handle"], nonce=nonce, **keys.fields())
        assert "proof" not in checked and len(checked["mac"]) == 32
        assert verify_proof(held, nonce, {**checked, "handle": warm["handle"]}, keys).units == 100
        nonce = os.urandom(32)
        spent = c.request("decrement", handle=warm["handle"], units=4, nonce=nonce, **keys.fields())
        assert "proof" not in spent and spent["units"] == 96
        assert verify_proof(held, nonce, {**spent, "handle": warm["handle"]}, keys).units == 96
        with pytest.raises(LicentiaError) as e:  # the MAC covers the units
            verify_proof(held, nonce, {**spent, "handle": warm["handle"], "units": 97}, keys)
        assert e.value.code is ErrorCode.SECURITY_PROBLEM

        # a flipped MAC byte, the answer replayed for another challenge, a MAC on another
        # connection's keys: all refused as a security problem
        flipped = {**warm, "mac": warm["mac"][:5] + bytes([warm["mac"][5] ^ 0x80]) + warm["mac"][6:]}
        for reply, nonce, with_keys in ((flipped, warm_nonce, keys), (warm, os.urandom(32), keys),
                                        (warm, warm_nonce, ProofKeys()), (warm, warm_nonce, None)):
            with pytest.raises(LicentiaError) as e:
                verify_grant(firm_key, vendor.firm, 7, nonce, reply, with_keys)
            assert e.value.code is ErrorCode.SECURITY_PROBLEM

        # another program key on the same connection: a new exchange, a new runtime key
        other = ProofKeys()
        renewed, _ = access(c, other)
        assert "mac" not in renewed and renewed["kx"] not in (None, runtime_kx)
        assert "mac" in access(c, other)[0]

        # no `kx`, or one that is not a key: the container's plain signature
        plain, _ = access(c, None)
        assert "kx" not in plain and "mac" not in plain and len(plain["proof"]) == 64
        unusable, _ = access(c, None, kx=bytes(32))
        assert "kx" not in unusable and len(unusable["proof"]) == 64
        with pytest.raises(LicentiaError) as e:
            c.request("access", **ask, nonce=os.urandom(32), kx="not bytes")
        assert e.value.code is ErrorCode.INVALID_PARAMETER

    with Client(rt.socket) as c2:  # a new connection agrees its own key, even with the same program key
        hello(c2)
        fresh, _ = access(c2, keys)
        assert "mac" not in fresh and fresh["kx"] != runtime_kx
        assert "mac" in access(c2, keys)[0]
    assert rt.sessions() != []


def test_a_token_signs_every_answer_even_when_the_program_offers_a_key(
        tmp_path: Path, root: Path, vendor: Vendor, procs: Procs, store: TokenStore) -> None:
    """The token's key cannot leave it: no proof key is agreed for a token container."""
    serial, _ = token_container(store, vendor, [ProductItem(product_code=7, quantity=2, units=50)])
    rt = token_runtime(procs, tmp_path / "home", root, store)
    wait_for("the token container", lambda: any(c["serial"] == serial and c["status"] == "ok"
                                                for c in get(rt, "/api/containers")))
    firm_key = load_firm_key(vendor.public_file)
    keys = ProofKeys()
    with Client(rt.socket) as c:
        hello(c)
        for _ in range(2):
            nonce = os.urandom(32)
            # `keyed` names the token even so: the answer is still the token's own signature
            reply = c.request("access", firm=vendor.firm, product=7, nonce=nonce, kx=keys.public, keyed=[serial])
            assert len(reply["proof"]) == 64 and "kx" not in reply and "mac" not in reply
            held = verify_grant(firm_key, vendor.firm, 7, nonce, reply, keys)
            for op, extra in (("decrement", {"units": 1}), ("check", {})):
                nonce = os.urandom(32)
                answer = c.request(op, handle=reply["handle"], nonce=nonce, kx=keys.public, keyed=[serial], **extra)
                assert len(answer["proof"]) == 64 and "kx" not in answer and "mac" not in answer
                verify_proof(held, nonce, {**answer, "handle": reply["handle"]}, keys)
            c.request("release", handle=reply["handle"])
    assert keys.macs == {}
