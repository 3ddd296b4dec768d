"""Certificate requests and certificates built as DER and signed by a key that stays in a token.

The to-be-signed structures are assembled with asn1crypto; the signature comes from a
`Signer` (a token key, through PKCS#11). Reading CSRs and certificates uses
`cryptography.x509`. Pure functions: the clock (`now`) and serial numbers are parameters.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from asn1crypto import csr as asn1_csr, keys as asn1_keys, pem, x509 as asn1_x509
from cryptography import x509

from licentia.containers.pkcs11 import KeyKind, key_identifier, public_key_kind
from licentia.crypto.x509 import SIGNATURE_DIGEST
from licentia.model import ErrorCode, LicentiaError

# Backdating absorbs small clock differences between the CA and the first verifier.
BACKDATE = timedelta(minutes=5)


class Signer(Protocol):
    """Something that signs with one key: a token key pair, by label."""

    @property
    def kind(self) -> KeyKind: ...

    def sign(self, data: bytes) -> bytes: ...


def signature_algorithm(kind: KeyKind) -> str:
    """asn1crypto's name of the signature algorithm a key of this kind signs with."""
    if kind is KeyKind.ED25519:
        return "ed25519"
    return f"{SIGNATURE_DIGEST}_{'rsa' if kind.is_rsa else 'ecdsa'}"


# -- names --------------------------------------------------------------------------------


def parse_subject(text: str) -> bytes:
    """A distinguished name as DER, from RFC 4514 ("CN=node1,O=Example") or OpenSSL
    ("/O=Example/CN=node1") notation."""
    text = text.strip()
    if text.startswith("/"):
        parts = [p for p in text[1:].split("/") if p]
        text = ",".join(reversed([p.replace(",", "\\,") for p in parts]))
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"cannot read the subject {text!r}: {exc}",
            hint='write it as "CN=node1,O=Example" (or "/O=Example/CN=node1")',
        ) from None
    if len(name) == 0:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the subject is empty")
    return name.public_bytes()


_SHORT_NAMES = {
    "common_name": "CN",
    "organization_name": "O",
    "organizational_unit_name": "OU",
    "country_name": "C",
    "state_or_province_name": "ST",
    "locality_name": "L",
    "email_address": "emailAddress",
    "serial_number": "serialNumber",
    "domain_component": "DC",
}


def subject_text(name_der: bytes) -> str:
    """RFC 4514 text of a DER name ("CN=node1,O=Example"), for people."""
    name = asn1_x509.Name.load(name_der)
    parts = []
    for rdn in reversed(list(name.chosen)):
        pieces = []
        for attribute in rdn:
            kind = attribute["type"].native
            value = str(attribute["value"].native)
            escaped = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
            pieces.append(f"{_SHORT_NAMES.get(kind, attribute['type'].dotted)}={escaped}")
        parts.append("+".join(pieces))
    return ",".join(parts)


def unarmor(data: bytes) -> bytes:
    """DER from PEM (the first block) or DER as given."""
    if pem.detect(data):
        _kind, _headers, der = pem.unarmor(data)
        return bytes(der)
    return data


def _general_names(dns: Sequence[str], ips: Sequence[str]) -> list[Any]:
    names: list[Any] = []
    for host in dns:
        host = host.strip()
        if not host or not host.isascii() or " " in host:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                f"{host!r} is not a DNS name (ASCII, no spaces; use punycode for others)",
            )
        names.append(asn1_x509.GeneralName(name="dns_name", value=host))
    for text in ips:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, f"{text!r} is not an IP address"
            ) from None
        names.append(asn1_x509.GeneralName(name="ip_address", value=str(address)))
    return names


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CsrInfo:
    """What a CA takes from a verified signing request."""

    subject: bytes  # DER name
    public_key: bytes  # SPKI DER
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    der: bytes

    @property
    def subject_text(self) -> str:
        return subject_text(self.subject)


def _alt_names(extensions: x509.Extensions) -> tuple[list[str], list[str]]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        [str(n) for n in san.get_values_for_type(x509.DNSName)],
        [str(n) for n in san.get_values_for_type(x509.IPAddress)],
    )


def build_csr(
    public_key: bytes,
    subject: bytes,
    signer: Signer,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> bytes:
    """A PKCS#10 request (DER) for `public_key`, self-signed by the token key in `signer`."""
    attributes = []
    names = _general_names(dns, ips)
    if names:
        extensions = asn1_x509.Extensions(
            [{"extn_id": "subject_alt_name", "critical": False, "extn_value": names}]
        )
        attributes.append({"type": "extension_request", "values": [extensions]})
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.load(subject),
            "subject_pk_info": asn1_keys.PublicKeyInfo.load(public_key),
            "attributes": attributes,
        }
    )
    tbs = info.dump()
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": signature_algorithm(signer.kind)},
            "signature": signer.sign(tbs),
        }
    )
    return bytes(request.dump())


def read_csr(data: bytes) -> CsrInfo:
    """A signing request (PEM or DER) whose self-signature verifies, or CSR_INVALID."""
    try:
        der = unarmor(data)
        request = x509.load_der_x509_csr(der)
        valid = request.is_signature_valid
    except (ValueError, TypeError) as exc:
        raise LicentiaError(ErrorCode.CSR_INVALID, f"the request cannot be read: {exc}") from None
    if not valid:
        raise LicentiaError(
            ErrorCode.CSR_INVALID,
            "the request's self-signature does not verify (altered or damaged)",
        )
    tbs = asn1_csr.CertificationRequest.load(der)["certification_request_info"]
    dns, ips = _alt_names(request.extensions)
    return CsrInfo(
        subject=bytes(tbs["subject"].dump()),
        public_key=bytes(tbs["subject_pk_info"].dump()),
        dns=tuple(dns),
        ips=tuple(ips),
        der=der,
    )


# -- certificates -------------------------------------------------------------------------


def _time(moment: datetime) -> Any:
    moment = moment.astimezone(UTC).replace(microsecond=0)
    kind = "utc_time" if moment.year < 2050 else "general_time"
    return asn1_x509.Time(name=kind, value=moment)


def build_certificate(
    *,
    subject: bytes,
    public_key: bytes,
    issuer: bytes | None,
    issuer_public_key: bytes,
    signer: Signer,
    serial: int,
    now: datetime,
    days: int,
    ca: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> bytes:
    """An X.509 v3 certificate (DER) signed by `signer`.

    `issuer` None makes it self-signed (a root CA). A CA certificate gets basicConstraints
    CA:TRUE (path length 0) and keyCertSign/cRLSign; an end-entity certificate gets
    digitalSignature (plus keyEncipherment for RSA), serverAuth and clientAuth, and the
    subject alternative names.
    """
    if days < 1:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, "a certificate must be valid for at least one day"
        )
    subject_kind = public_key_kind(public_key)
    ski = key_identifier(public_key)
    aki = key_identifier(issuer_public_key)
    extensions: list[dict[str, Any]] = []
    if ca:
        extensions.append(
            {
                "extn_id": "basic_constraints",
                "critical": True,
                "extn_value": {"ca": True, "path_len_constraint": 0},
            }
        )
        extensions.append(
            {
                "extn_id": "key_usage",
                "critical": True,
                "extn_value": {"digital_signature", "key_cert_sign", "crl_sign"},
            }
        )
    else:
        usage = {"digital_signature"}
        if subject_kind is not None and subject_kind.is_rsa:
            usage.add("key_encipherment")
        extensions.append(
            {"extn_id": "basic_constraints", "critical": True, "extn_value": {"ca": False}}
        )
        extensions.append({"extn_id": "key_usage", "critical": True, "extn_value": usage})
        extensions.append(
            {
                "extn_id": "extended_key_usage",
                "critical": False,
                "extn_value": ["server_auth", "client_auth"],
            }
        )
        names = _general_names(dns, ips)
        if names:
            extensions.append(
                {
                    "extn_id": "subject_alt_name",
                    "critical": not asn1_x509.Name.load(subject).native,
                    "extn_value": names,
                }
            )
    extensions.append({"extn_id": "key_identifier", "critical": False, "extn_value": ski})
    extensions.append(
        {
            "extn_id": "authority_key_identifier",
            "critical": False,
            "extn_value": {"key_identifier": aki},
        }
    )
    algorithm = {"algorithm": signature_algorithm(signer.kind)}
    tbs = asn1_x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": algorithm,
            "issuer": asn1_x509.Name.load(issuer if issuer is not None else subject),
            "validity": {
                "not_before": _time(now - BACKDATE),
                "not_after": _time(now + timedelta(days=days)),
            },
            "subject": asn1_x509.Name.load(subject),
            "subject_public_key_info": asn1_keys.PublicKeyInfo.load(public_key),
            "extensions": extensions,
        }
    )
    signature = signer.sign(tbs.dump())
    cert = asn1_x509.Certificate(
        {"tbs_certificate": tbs, "signature_algorithm": algorithm, "signature_value": signature}
    )
    return bytes(cert.dump())


# -- reading certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    der: bytes
    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    public_key: bytes  # SPKI DER
    is_ca: bool
    dns: tuple[str, ...]
    ips: tuple[str, ...]


def read_certificate(data: bytes) -> CertInfo:
    """A certificate from PEM or DER, or CERTIFICATE_INVALID."""
    try:
        der = unarmor(data)
        cert = x509.load_der_x509_certificate(der)
        spki = bytes(
            asn1_x509.Certificate.load(der)["tbs_certificate"]["subject_public_key_info"].dump()
        )
        subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
    except (ValueError, TypeError) as exc:
        raise LicentiaError(
            ErrorCode.CERTIFICATE_INVALID, f"the certificate cannot be read: {exc}"
        ) from None
    is_ca = False
    with contextlib.suppress(x509.ExtensionNotFound):
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    dns, ips = _alt_names(cert.extensions)
    return CertInfo(
        der=der,
        subject=subject,
        issuer=issuer,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        public_key=spki,
        is_ca=is_ca,
        dns=tuple(dns),
        ips=tuple(ips),
    )


def to_pem(der: bytes, kind: str = "CERTIFICATE") -> bytes:
    """PEM armour for a DER blob."""
    return bytes(pem.armor(kind, der))
