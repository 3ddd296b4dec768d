"""Checking an answer so that a faked runtime cannot fake a license.

The program holds the firm's public key. An access answer carries the vendor-signed
license (which names the container's serial and public key) and the container's
signature over the program's fresh challenge, the handle and the item's state. Both
are checked here; either failing is `SECURITY_PROBLEM` (109): whatever answered is not
the licensed container.

A protected program pays for this at start, so it stays lean: the license is checked
here directly (Ed25519 over its exact bytes with `licentia.crypto.verify`, then its
msgpack body decoded) rather than through `licentia.core`; `cryptography` loads only
when the first request that will be verified is sent. The same signed license comes
back on every access, so a license whose signature verified is remembered for the
process (by its exact bytes and the firm key); the container's proof over the fresh
challenge is verified on every answer.

The container's proof is a signature, or a MAC under a proof key agreed on this
connection (`ProofKeys`): the first answer of a container on a connection signs both
sides' ephemeral exchange keys, and from then on the program checks an HMAC instead of
an Ed25519 signature. Only the holder of the container key can sign the runtime's
exchange key, so only it can know the proof key; the fresh challenge in every MAC keeps
each answer as fresh as a signature would.
"""

from __future__ import annotations

import os
import struct

import msgpack

from licentia.model.errors import ErrorCode, LicentiaError
from licentia.sdk.proof import proof_key_info, proof_message, proof_message_kx

TYPE_CHECKING = False  # typing is not imported at run time: see licentia/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from licentia.crypto.recipes import MacKey

    FirmKey = bytes | str | os.PathLike[str]

# the license artifact (licentia.core.licenses): magic | version | body length | body | signature
LICENSE_MAGIC = b"LCLI"
LICENSE_VERSIONS = (1,)
# a borrowed seat (licentia.core.borrow): magic | version | body length | body | signature
BORROW_MAGIC = b"LCBW"
BORROW_VERSIONS = (1,)
_HEADER = struct.Struct(">4sBI")
_SIGNATURE_SIZE = 64
_KEY_SIZE = 32
_MAX_BODY = 16 * 1024 * 1024
_CACHE_LIMIT = 256  # distinct licenses remembered per process; only vendor-signed ones get in


class SignedLicense:
    """A license whose firm signature verified: what the vendor vouches for."""

    __slots__ = ("container_key", "firm_code", "firm_key", "item", "item_id", "serial")

    def __init__(self, serial: str, firm_code: int, item_id: int, item: dict[str, Any], container_key: bytes,
                 firm_key: bytes = b"") -> None:
        self.serial = serial
        self.firm_code = firm_code
        self.item_id = item_id
        self.item = item  # the product item's options, as the vendor signed them (do not change)
        self.container_key = container_key
        self.firm_key = firm_key  # the key whose signature over the license verified


class Verified:
    """The parts of an answer the vendor's and the container's signatures vouch for."""

    __slots__ = ("license", "units", "valid_until")

    def __init__(self, lic: SignedLicense, units: int | None, valid_until: int | None) -> None:
        self.license = lic
        self.units = units
        self.valid_until = valid_until

    @property
    def serial(self) -> str:
        return self.license.serial

    @property
    def firm_code(self) -> int:
        return self.license.firm_code

    @property
    def item_id(self) -> int:
        return self.license.item_id

    @property
    def item(self) -> dict[str, Any]:
        return self.license.item

    @property
    def container_key(self) -> bytes:
        return self.license.container_key

    def __repr__(self) -> str:
        return (f"Verified(serial={self.serial!r}, firm_code={self.firm_code}, item_id={self.item_id}, "
                f"units={self.units!r}, valid_until={self.valid_until!r})")


# ---------------------------------------------------------------------------- the firm key

# path -> (mtime_ns, size, file text): a program that names its key file on every access
# reads it once, and again only when the file changes
_key_files: dict[str, tuple[int, int, str]] = {}


def load_firm_key(key: FirmKey, firm_code: int | None = None) -> bytes:
    """The raw 32-byte firm public key from raw bytes, hex text, or a file that
    `licentia vendor export-public` wrote (its firm code must match)."""
    if isinstance(key, bytes) and len(key) == _KEY_SIZE:
        return key
    if isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdefABCDEF" for c in key):
        return bytes.fromhex(key)
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else _read_key_file(key)
    return _parse_key_file(text, firm_code)


def _read_key_file(key: str | os.PathLike[str]) -> str:
    path = os.fspath(key)
    try:
        st = os.stat(path)
        known = _key_files.get(path)
        if known is not None and known[0] == st.st_mtime_ns and known[1] == st.st_size:
            return known[2]
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot read the firm public key {key}: {exc}",
                            "export it with `licentia vendor export-public -o FILE`") from None
    if len(_key_files) >= _CACHE_LIMIT:
        _key_files.clear()
    _key_files[path] = (st.st_mtime_ns, st.st_size, text)
    return text


_parsed_keys: dict[tuple[str, int | None], bytes] = {}


def _parse_key_file(text: str, firm_code: int | None) -> bytes:
    found = _parsed_keys.get((text, firm_code))
    if found is not None:
        return found
    try:
        doc = _json_loads(text)
        if doc.get("format") != "licentia-firm-public-key":
            raise ValueError
        raw = bytes.fromhex(doc["public_key"])
        if len(raw) != _KEY_SIZE:
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the firm public key is not 32 bytes, hex, or an exported key file",
                            "export it with `licentia vendor export-public -o FILE`") from None
    if firm_code is not None and int(doc.get("firm_code", firm_code)) != firm_code:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                            f"the firm public key is firm {doc.get('firm_code')}'s, not firm {firm_code}'s")
    if len(_parsed_keys) >= _CACHE_LIMIT:
        _parsed_keys.clear()
    _parsed_keys[(text, firm_code)] = raw
    return raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _json_loads(text: str) -> Any:
    """`json.loads` for the key file: strict JSON, no NaN or Infinity."""
    import json  # only a program that reads a key file pays for json

    return json.loads(text, parse_constant=_no_constant)


# ---------------------------------------------------------------------------- answers


def _refuse(what: str) -> LicentiaError:
    return LicentiaError(ErrorCode.SECURITY_PROBLEM, f"the answer failed verification: {what}")


class ProofKeys:
    """This program's side of the proof keys on one connection to a runtime: an ephemeral
    X25519 key pair (made for the connection, never stored) and, per container serial,
    the MAC key agreed with that container's runtime.

    `fields()` goes with every request that carries a challenge: the public key (`kx`)
    and the serials whose key this side holds (`keyed`), so the runtime answers with a
    MAC only where the program can check one (a request sent before the key was agreed
    gets a signature)."""

    __slots__ = ("_exchange", "macs", "public")

    def __init__(self) -> None:
        from licentia.crypto.recipes import KeyAgreement  # loads cryptography's core

        self._exchange = KeyAgreement()
        self.public: bytes = self._exchange.public
        self.macs: dict[str, tuple[bytes, MacKey]] = {}  # serial -> (container key, MAC key)

    def fields(self) -> dict[str, Any]:
        macs = self.macs
        if macs:
            return {"kx": self.public, "keyed": list(macs)}
        return {"kx": self.public}

    def agree(self, lic: SignedLicense, runtime_kx: bytes) -> None:
        """Keep the key agreed with `runtime_kx`, the runtime's ephemeral key that
        `lic`'s container signed together with this side's."""
        from licentia.crypto.recipes import InvalidArtifact, MacKey

        try:
            key = self._exchange.agree(runtime_kx, proof_key_info(self.public, runtime_kx, lic.serial))
        except InvalidArtifact:
            raise _refuse("the runtime's key-exchange key is not a valid key") from None
        if len(self.macs) >= _CACHE_LIMIT:
            self.macs.clear()
        self.macs[lic.serial] = (lic.container_key, MacKey(key))


def verify_grant(firm_key: bytes, firm_code: int, product_code: int, nonce: bytes, reply: dict[str, Any],
                 keys: ProofKeys | None = None) -> Verified:
    """Check an access answer; return what it vouches for. `keys`: the connection's proof
    keys, when the request carried them."""
    license_bytes = reply.get("license")
    if type(license_bytes) is not bytes or ("proof" not in reply and "mac" not in reply):
        raise _refuse("it carries no signed license or no proof of the container")
    lic = verify_license(firm_key, firm_code, license_bytes)
    if lic.item.get("product_code") != product_code:
        raise _refuse(f"the license is for product {lic.item.get('product_code')}, not {product_code}")
    if reply.get("container") not in (None, lic.serial) or reply.get("item") not in (None, lic.item_id):
        raise _refuse("the answer names another container or item than its license")
    return verify_proof(lic, nonce, reply, keys)


def verify_proof(verified: Verified | SignedLicense, nonce: bytes, reply: dict[str, Any],
                 keys: ProofKeys | None = None) -> Verified:
    """Check the container's proof over the challenge, the handle and the state: its
    signature (which may open a proof key, see `ProofKeys`), or a MAC under the proof key
    this connection agreed with that container."""
    lic = verified.license if isinstance(verified, Verified) else verified
    signer = reply.get("container")
    if signer is not None and signer != lic.serial and lic.item.get("tmr_id") is not None:
        lic = _constituent(lic, reply)
    handle = reply.get("proof_handle", reply.get("handle"))
    units = reply.get("units")
    until = reply.get("valid_until")
    if type(handle) is not int:
        raise _refuse("it carries no proof of the container")
    if units is not None and type(units) is not int:
        raise _refuse("the remaining units are not a number")
    if until is not None and type(until) is not int:
        raise _refuse("the validity end is not a time")
    mac = reply.get("mac")
    proof = reply.get("proof")
    runtime_kx = reply.get("kx")
    if mac is not None:
        if proof is not None or runtime_kx is not None:
            raise _refuse("it carries both a MAC and a signature")
        kept = keys.macs.get(lic.serial) if keys is not None else None
        if kept is None or kept[0] != lic.container_key:
            raise _refuse(f"it carries a MAC, but no proof key was agreed with container {lic.serial} on this "
                          "connection (the runtime or server may have been replaced)")
        message = proof_message(nonce, handle, lic.serial, lic.firm_code, lic.item_id, units, until)
        if type(mac) is not bytes or not kept[1].matches(message, mac):
            raise _refuse("the container's MAC over this program's challenge does not verify "
                          "(the runtime or server may have been replaced)")
    else:
        if type(proof) is not bytes:
            raise _refuse("it carries no proof of the container")
        if runtime_kx is None:
            message = proof_message(nonce, handle, lic.serial, lic.firm_code, lic.item_id, units, until)
        elif keys is None or type(runtime_kx) is not bytes:
            raise _refuse("it answers a key exchange this program did not offer")
        else:
            message = proof_message_kx(nonce, handle, lic.serial, lic.firm_code, lic.item_id, units, until,
                                       keys.public, runtime_kx)
        if not _signed_by(lic.container_key, message, proof):
            raise _refuse("the container's signature over this program's challenge does not verify "
                          "(the runtime or server may have been replaced)")
    initial = lic.item.get("units")
    if units is not None and (initial is None or units > initial):
        raise _refuse("more units remain than the license ever had")
    expires = lic.item.get("expires_at")
    if expires is not None and until is not None and until > expires:
        raise _refuse("the validity end is later than the license's expiry")
    if "borrowed_until" in lic.item and until is None:
        raise _refuse("a borrowed seat's answer names no validity end")
    if runtime_kx is not None and keys is not None:
        keys.agree(lic, runtime_kx)
    return Verified(lic, units, until)


def _constituent(lic: SignedLicense, reply: dict[str, Any]) -> SignedLicense:
    """The license of the constituent that proved a TMR answer in place of `lic`'s (the
    upstream that proved it before has gone): accepted only when the firm signed it, for the
    same TMR license and product, and `lic` itself (vendor-signed) names its container and
    container key among the three constituents. Anything else is 109."""
    signer = reply.get("container")
    named = lic.item.get("tmr_constituents")
    if type(named) is not list:
        raise _refuse(f"the answer is proved by container {signer}, and the TMR license of container {lic.serial} "
                      "names no constituents (issued before licenses named them: take the license again, or have "
                      "the vendor issue it anew)")
    data = reply.get("license")
    if type(data) is not bytes or not lic.firm_key:
        raise _refuse(f"the answer is proved by container {signer} without its license")
    other = verify_license(lic.firm_key, lic.firm_code, data)
    item, theirs = lic.item, other.item
    if (other.serial != signer or theirs.get("tmr_id") != item.get("tmr_id")
            or theirs.get("product_code") != item.get("product_code")
            or theirs.get("tmr_constituents") != named
            or not any(type(p) is list and p == [other.serial, other.container_key] for p in named)):
        raise _refuse(f"container {signer} is not a constituent of TMR license {item.get('tmr_id')} "
                      "that the vendor named")
    return other


# (firm key, license bytes) -> the license they verified to; exact bytes, so nothing else matches
_licenses: dict[tuple[bytes, bytes], SignedLicense] = {}


def verify_license(firm_key: bytes, firm_code: int, data: bytes) -> SignedLicense:
    """Check the firm's signature over a license's exact bytes, then decode it.

    Verified once per process for the same bytes and key; different bytes (another
    license, or the same one altered in any bit) are verified afresh."""
    found = _licenses.get((firm_key, data))
    if found is None:
        found = _verify_license(firm_key, firm_code, data)
        if len(_licenses) >= _CACHE_LIMIT:
            _licenses.clear()
        _licenses[(firm_key, data)] = found
    if found.firm_code != firm_code:
        raise _refuse(f"the license is firm {found.firm_code}'s, not firm {firm_code}'s")
    return found


def _verify_license(firm_key: bytes, firm_code: int, data: bytes) -> SignedLicense:
    if data[:4] == BORROW_MAGIC:
        return _verify_borrowed(firm_key, firm_code, data)
    body = _license_body(data)
    if body is None or not _signed_by(firm_key, data[:-_SIGNATURE_SIZE], data[-_SIGNATURE_SIZE:]):
        raise _refuse(f"the license is not signed by firm {firm_code}'s key")
    # signed by the firm: now its contents may be read
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several types; all mean "not msgpack"
        fields = None
    serial = fields.get("serial") if type(fields) is dict else None
    key = fields.get("container_public_key") if type(fields) is dict else None
    signed_firm = fields.get("firm_code") if type(fields) is dict else None
    item_id = fields.get("item_id") if type(fields) is dict else None
    item = fields.get("item") if type(fields) is dict else None
    if (type(serial) is not str or type(key) is not bytes or len(key) != _KEY_SIZE or type(signed_firm) is not int
            or type(item_id) is not int or type(item) is not dict or type(item.get("product_code")) is not int):
        raise _refuse("the license has missing or malformed fields")
    for name in ("units", "expires_at"):
        value = item.get(name)
        if value is not None and type(value) is not int:
            raise _refuse(f"the license's {name} is not a number")
    return SignedLicense(serial, signed_firm, item_id, item, key, firm_key)


def _verify_borrowed(firm_key: bytes, firm_code: int, data: bytes) -> SignedLicense:
    """A seat borrowed from a network server (licentia.core.borrow): the firm signed the
    license inside, the license names the server container's key, that key signed the
    certificate, and the certificate names the client container (its key then signs the
    proofs) and the borrow's end, which becomes the item's expiry as the program sees it."""
    body = _artifact_body(data, BORROW_MAGIC, BORROW_VERSIONS)
    if body is None or len(body) < 4:
        raise _refuse("the borrow certificate is malformed")
    (n,) = struct.unpack_from(">I", body)
    # only a plain license inside (a certificate in a certificate is not a borrow)
    inner = _verify_license(firm_key, firm_code, body[4:4 + n]) if body[4:8] == LICENSE_MAGIC else None
    if inner is None or not _signed_by(inner.container_key, data[:-_SIGNATURE_SIZE], data[-_SIGNATURE_SIZE:]):
        raise _refuse("the borrow certificate is not signed by the container its license names")
    try:
        fields = msgpack.unpackb(body[4 + n:], raw=False, strict_map_key=True)
    except Exception:
        fields = None
    get = fields.get if type(fields) is dict else {}.get
    serial, key, item_id = get("client_serial"), get("client_key"), get("client_item")
    until, server, server_item = get("until"), get("server_serial"), get("server_item")
    if (type(serial) is not str or type(key) is not bytes or len(key) != _KEY_SIZE or type(item_id) is not int
            or type(until) is not int or server != inner.serial or server_item != inner.item_id):
        raise _refuse("the borrow certificate has missing or malformed fields")
    item = dict(inner.item)
    expires = item.get("expires_at")
    item.update(quantity=0, borrow_max=0, borrowed_until=until,
                expires_at=until if expires is None else min(expires, until))
    return SignedLicense(serial, inner.firm_code, item_id, item, key, firm_key)


def _license_body(data: bytes) -> bytes | None:
    return _artifact_body(data, LICENSE_MAGIC, LICENSE_VERSIONS)


def _artifact_body(data: bytes, magic: bytes, versions: tuple[int, ...]) -> bytes | None:
    """The body of a license artifact whose header and length are right, else None."""
    if len(data) < _HEADER.size + _SIGNATURE_SIZE:
        return None
    found, version, length = _HEADER.unpack_from(data)
    if found != magic or version not in versions or length > _MAX_BODY:
        return None
    if len(data) != _HEADER.size + length + _SIGNATURE_SIZE:
        return None
    return data[_HEADER.size : _HEADER.size + length]


def _signed_by(public_key: bytes, data: bytes, signature: bytes) -> bool:
    from licentia.crypto import recipes  # loads cryptography's core on the first check

    try:
        recipes.verify(public_key, data, signature)
    except recipes.InvalidArtifact:
        return False
    return True


def read_unverified(data: Any) -> dict[str, Any]:
    """The item options of a license without checking its signature (for display only)."""
    if type(data) is not bytes:
        return {}
    body = _license_body(data)
    if body is None:
        return {}
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:
        return {}
    item = fields.get("item") if type(fields) is dict else None
    return dict(item) if type(item) is dict else {}
