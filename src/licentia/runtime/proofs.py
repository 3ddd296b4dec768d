"""How the runtime proves an answer to a program's challenge (licentia.sdk.proof): the
container's signature, or a MAC under the proof key agreed with the program on its
connection (`ProofKeys`, one per connection, in memory only).

A module of its own so that it compiles with the license path (scripts/build_native.py):
the MAC answers every proved access after a connection's first, and its bookkeeping runs
compiled there."""

from __future__ import annotations

from typing import Any

from licentia.core.content import ContainerContent
from licentia.crypto.recipes import InvalidArtifact, KeyAgreement, MacKey, Signer
from licentia.sdk.proof import KX_SIZE, proof_key_info, proof_message, proof_message_kx

_signers: dict[bytes, Signer] = {}  # container key -> the key loaded once (loading costs as much as signing)


def _signer(key: bytes) -> Signer:
    signer = _signers.get(key)
    if signer is None:
        if len(_signers) > 256:
            _signers.clear()
        signer = Signer(key)
        _signers[key] = signer
    return signer


def make_proof(content: ContainerContent, nonce: bytes, handle: int, firm: int, item_id: int,
               units: int | None, valid_until: int | None) -> bytes:
    """The container's signature over the program's challenge and the item's state."""
    return _signer(content.sign_key).sign(
        proof_message(nonce, handle, str(content.serial), firm, item_id, units, valid_until))


class Agreed:
    """A proof key agreed with one program key for one container."""

    __slots__ = ("mac", "program_kx", "runtime_kx", "sign_key")

    def __init__(self, program_kx: bytes, runtime_kx: bytes, mac: MacKey, sign_key: bytes) -> None:
        self.program_kx = program_kx
        self.runtime_kx = runtime_kx
        self.mac = mac
        self.sign_key = sign_key


class ProofKeys:
    """One connection's proof keys: per container serial, the key agreed with the
    program's ephemeral key (`kx`). Lives and dies with the connection, in memory only.

    `prove` answers a request that carries a challenge: a MAC under the agreed key when
    the program says it holds that key (`keyed` names the serial) for the same `kx`;
    otherwise the container's signature, which also binds the program's and this side's
    ephemeral keys when the program offered one (and a key is agreed, or kept, for the
    next answers)."""

    __slots__ = ("agreed",)

    def __init__(self) -> None:
        self.agreed: dict[str, Agreed] = {}

    def prove(self, content: ContainerContent, msg: dict[str, Any], handle: int, firm: int, item_id: int,
              units: int | None, valid_until: int | None, serial: str | None = None) -> dict[str, bytes]:
        """The proof fields of the answer to `msg` (which carries a `nonce`); `serial` is
        str(content.serial), when the caller has it at hand."""
        nonce: bytes = msg["nonce"]
        if serial is None:
            serial = str(content.serial)
        kx = msg.get("kx")
        agreed = self.agreed.get(serial)
        # the usual answer first: the same program key (checked when it was agreed) and
        # container key as when the key was agreed, and the program says it holds it
        if agreed is not None and agreed.program_kx == kx and (agreed.sign_key is content.sign_key
                                                              or agreed.sign_key == content.sign_key):
            keyed = msg.get("keyed")
            if type(keyed) is list and serial in keyed:
                return {"mac": agreed.mac.tag(proof_message(nonce, handle, serial, firm, item_id, units,
                                                            valid_until))}
        elif type(kx) is not bytes or len(kx) != KX_SIZE:
            return {"proof": make_proof(content, nonce, handle, firm, item_id, units, valid_until)}
        else:  # another program key (or container key), or none agreed yet: a new exchange
            exchange = KeyAgreement()
            try:
                key = exchange.agree(kx, proof_key_info(kx, exchange.public, serial))
            except InvalidArtifact:  # not a usable key: the plain signature proves as well
                return {"proof": make_proof(content, nonce, handle, firm, item_id, units, valid_until)}
            agreed = Agreed(kx, exchange.public, MacKey(key), content.sign_key)
            self.agreed[serial] = agreed
        signature = _signer(content.sign_key).sign(
            proof_message_kx(nonce, handle, serial, firm, item_id, units, valid_until, kx, agreed.runtime_kx))
        return {"proof": signature, "kx": agreed.runtime_kx}


__all__ = ["Agreed", "ProofKeys", "make_proof"]
