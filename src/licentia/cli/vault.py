"""`licentia vault …`: X.509 keys and certificates kept inside a PKCS#11 token.

Every command that opens a token takes --module/--token/--slot and reads the user PIN
once: from --pin-file, else $LICENTIA_PIN, else a prompt on a terminal. A wrong PIN is
reported (with what the token says about remaining tries) and never retried.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from licentia.model import ErrorCode, LicentiaError

if TYPE_CHECKING:
    from licentia.vault.vault import Vault

KINDS = ("ec-p256", "rsa-2048", "rsa-3072")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "vault",
        help="certificate vault: keys and X.509 certificates inside a PKCS#11 token",
        description="Keys are made and used inside the token; certificates are requested, "
        "signed by a CA whose key also lives in a token, and stored next to their keys.",
    )
    vs = p.add_subparsers(dest="vault_command", metavar="ACTION", required=True)

    def cmd(name: str, help: str, handler: Any, *, token: bool = True) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = vs.add_parser(name, help=help, description=help)
        c.add_argument(
            "--module", help="PKCS#11 module (default $LICENTIA_PKCS11_MODULE or SoftHSM2)"
        )
        if token:
            c.add_argument("--token", help="token label (default: the only token)")
            c.add_argument("--slot", type=int, help="slot id instead of a label")
            c.add_argument(
                "--pin-file", help="file holding the user PIN (default $LICENTIA_PIN or a prompt)"
            )
        c.set_defaults(handler=handler)
        return c

    def names(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--dns", action="append", default=[], help="DNS subject alternative name (repeatable)"
        )
        c.add_argument(
            "--ip", action="append", default=[], help="IP subject alternative name (repeatable)"
        )

    def out(c: argparse.ArgumentParser, what: str) -> None:
        c.add_argument("--out", "-o", help=f"write the {what} here (default: standard output)")

    cmd("tokens", "list the tokens the PKCS#11 module offers", cmd_tokens, token=False)

    c = cmd(
        "init",
        "make a token a vault (vendor mode, or user mode with slots and a PIN to change)",
        cmd_init,
    )
    c.add_argument("--mode", choices=("vendor", "user"), default="vendor")
    c.add_argument(
        "--slots", type=int, help="certificate slots (user mode default 8; vendor: unlimited)"
    )
    c.add_argument("--force", action="store_true", help="set the mode again on a vault token")

    c = cmd("list", "list the vault's entries (keys, certificates, trusted CAs)", cmd_list)
    c.add_argument("--json", action="store_true")

    c = cmd("keygen", "generate a non-extractable key pair inside the token", cmd_keygen)
    c.add_argument("label")
    c.add_argument("--type", choices=KINDS, default="ec-p256")

    c = cmd(
        "csr",
        "make a certificate signing request for a token key (signed inside the token)",
        cmd_csr,
    )
    c.add_argument("label")
    c.add_argument("--subject", required=True, help='e.g. "CN=node1,O=Example"')
    names(c)
    out(c, "request (PEM)")

    c = cmd(
        "ca-init", "make a CA: key pair in this token and a self-signed CA certificate", cmd_ca_init
    )
    c.add_argument("label")
    c.add_argument("--subject", required=True)
    c.add_argument("--type", choices=KINDS, default="ec-p256")
    c.add_argument("--days", type=int, default=3650)
    out(c, "CA certificate (PEM)")

    c = cmd("sign", "CA: verify a signing request and issue its certificate", cmd_sign)
    c.add_argument("csr", help="the request file (PEM or DER)")
    c.add_argument("--ca", required=True, help="label of the CA entry on this token")
    c.add_argument("--days", type=int, default=365)
    out(c, "certificate (PEM)")

    c = cmd(
        "import", "store a certificate: next to its key, or alone (e.g. a trusted CA)", cmd_import
    )
    c.add_argument("certificate", help="certificate file (PEM or DER)")
    c.add_argument("--label", help="label for a certificate without a key on this token")
    c.add_argument("--ca", action="store_true", help="trust it as a CA (for vault packages)")
    c.add_argument(
        "--replace", action="store_true", help="renew: replace the key's current certificate"
    )

    c = cmd("export", "write an entry's certificate", cmd_export)
    c.add_argument("label")
    c.add_argument("--der", action="store_true", help="DER instead of PEM")
    out(c, "certificate")

    c = cmd("delete", "delete an entry (key pair and certificate) from the token", cmd_delete)
    c.add_argument("label")

    c = cmd(
        "export-pkcs12",
        "CA, option 2: make a key and certificate in software and write them as PKCS#12",
        cmd_export_pkcs12,
    )
    c.add_argument("--ca", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--name", help="friendly name (becomes the label on import; default: the CN)")
    c.add_argument("--type", choices=KINDS, default="ec-p256")
    c.add_argument("--days", type=int, default=365)
    c.add_argument(
        "--password-file",
        help="PKCS#12 password file (default $LICENTIA_PKCS12_PASSWORD or a prompt)",
    )
    names(c)
    c.add_argument("--out", "-o", required=True, help="the PKCS#12 file to write")

    c = cmd(
        "import-pkcs12",
        "option 2: put the key and certificate of a PKCS#12 file into the token",
        cmd_import_pkcs12,
    )
    c.add_argument("file")
    c.add_argument("--label", help="label (default: the file's friendly name)")
    c.add_argument("--password-file")

    c = cmd(
        "request",
        "option 3: write this token's request (its transport public key) for a CA",
        cmd_request,
    )
    c.add_argument("--out", "-o", required=True)

    c = cmd(
        "package",
        "CA, option 3: make a key and certificate, encrypted for the requesting token and signed",
        cmd_package,
    )
    c.add_argument("request", help="the request file a target token made")
    c.add_argument("--ca", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--label", required=True, help="the entry's label on the target token")
    c.add_argument("--type", choices=KINDS, default="ec-p256")
    c.add_argument("--days", type=int, default=365)
    names(c)
    c.add_argument("--out", "-o", required=True)

    c = cmd(
        "unpackage",
        "option 3: verify a package and unwrap its key inside this token",
        cmd_unpackage,
    )
    c.add_argument("package")
    c.add_argument(
        "--ca", help="the issuing CA's certificate (else a CA imported with `import --ca`)"
    )

    c = cmd("change-pin", "change the user PIN (required first in user mode)", cmd_change_pin)
    c.add_argument(
        "--new-pin-file", help="file holding the new PIN (default $LICENTIA_NEW_PIN or a prompt)"
    )

    c = cmd("uri", "print the PKCS#11 URI of an entry's key, for openssl/gnutls", cmd_uri)
    c.add_argument("label")
    c.add_argument(
        "--type", dest="object_type", choices=("private", "cert", "public"), default="private"
    )
    c.add_argument("--pin-source", help="add ?pin-source=… (e.g. file:/run/secrets/pin)")

    c = cmd(
        "openssl-conf",
        "print an OPENSSL_CONF that loads the pkcs11 engine for this module",
        cmd_openssl_conf,
        token=False,
    )
    out(c, "configuration")


# -- inputs -------------------------------------------------------------------------------


def _secret(path: str | None, env: str, prompt: str, *, confirm: bool = False) -> str:
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER, f"cannot read {path}: {exc.strerror}"
            ) from None
    if env in os.environ:
        return os.environ[env]
    if not sys.stdin.isatty():
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"no {prompt} given: use a file option or ${env}, or run in a terminal to be asked",
        )
    first = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass(f"{prompt} again: ") != first:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the two {prompt}s differ")
    return first


def _pin(args: argparse.Namespace) -> str:
    return _secret(args.pin_file, "LICENTIA_PIN", "token user PIN")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER, f"cannot read the {what} {path}: {exc.strerror}"
        ) from None


def _write(path: str | None, data: bytes, *, private: bool = False) -> None:
    """Write to a file (atomically, by rename) or to standard output."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _now() -> datetime:
    return datetime.now(UTC)


def _vault(
    args: argparse.Namespace, *, for_pin_change: bool = False
) -> AbstractContextManager[Vault]:
    from licentia.vault.vault import open_vault

    return open_vault(
        args.module, token=args.token, slot=args.slot, pin=_pin(args), for_pin_change=for_pin_change
    )


def _note(text: str) -> None:
    print(text, file=sys.stderr)


# -- handlers -----------------------------------------------------------------------------


def cmd_tokens(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import find_module, list_tokens

    module = find_module(args.module)
    tokens = list_tokens(module)
    print(f"module {module}")
    if not tokens:
        print("no initialised tokens")
    for t in tokens:
        print(
            f"slot {t.slot_id:<12} label {t.label!r:<20} serial {t.serial:<18} PIN {t.pin_state}"
            + ("  (PIN must be changed)" if t.pin_to_be_changed else "")
        )
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import open_session
    from licentia.vault.vault import initialize

    with open_session(args.module, label=args.token, slot=args.slot, pin=_pin(args)) as session:
        state = initialize(session, args.mode, slots=args.slots, force=args.force)
        slots = "unlimited" if state.slots is None else str(state.slots)
        print(
            f"token '{session.info.label}' is a licentia vault: mode {state.mode}, {slots} certificate slots"
        )
        if state.pin_change_required:
            print("the PIN must be changed before first use: `licentia vault change-pin`")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from licentia.vault.vault import ED25519_WARNING

    with _vault(args) as v:
        entries = v.entries()
        if args.json:
            json.dump(
                {
                    "token": v.token_label,
                    "serial": v.token_serial,
                    "mode": v.state.mode,
                    "slots": v.state.slots,
                    "entries": [_entry_json(e) for e in entries],
                },
                sys.stdout,
                indent=2,
            )
            print()
            return 0
        slots = (
            f"{len(entries)} entries, no slot limit"
            if v.state.slots is None
            else f"{len(entries)} of {v.state.slots} slots used"
        )
        print(f"vault '{v.token_label}' serial {v.token_serial} mode {v.state.mode}, {slots}")
        for e in entries:
            print(_entry_line(e))
        if not v.openssl_compatible:
            _note(ED25519_WARNING)
    return 0


def _entry_json(e: Any) -> dict[str, Any]:
    cert = e.certificate
    return {
        "label": e.label,
        "id": e.id.hex(),
        "role": e.role,
        "kind": str(e.kind) if e.kind else None,
        "key_made_in_token": e.key.local if e.key else None,
        "subject": cert.subject if cert else None,
        "issuer": cert.issuer if cert else None,
        "not_after": cert.not_after.isoformat() if cert else None,
        "dns": list(cert.dns) if cert else [],
        "ips": list(cert.ips) if cert else [],
    }


def _entry_line(e: Any) -> str:
    parts = [f"  {e.label:<16} {e.role:<16} {e.kind or '?':<9}"]
    if e.key is not None:
        parts.append("made in token" if e.key.local else "imported")
    if e.certificate is not None:
        c = e.certificate
        parts.append(f"{c.subject} (issuer {c.issuer}) until {c.not_after:%Y-%m-%d}")
    return "  ".join(parts)


def cmd_keygen(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import KeyKind

    with _vault(args) as v:
        pair = v.keygen(args.label, KeyKind(args.type))
        print(
            f"key pair '{pair.label}' ({pair.kind}) made in token '{v.token_label}', id {pair.id.hex()}"
        )
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    from licentia.vault.x509build import to_pem

    with _vault(args) as v:
        der = v.csr(args.label, args.subject, dns=args.dns, ips=args.ip)
    _write(args.out, to_pem(der, "CERTIFICATE REQUEST"))
    return 0


def cmd_ca_init(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import KeyKind
    from licentia.vault.x509build import to_pem

    with _vault(args) as v:
        der = v.ca_init(
            args.label, args.subject, kind=KeyKind(args.type), days=args.days, now=_now()
        )
        if not v.openssl_compatible:
            from licentia.vault.vault import ED25519_WARNING

            _note(ED25519_WARNING)
    _write(args.out, to_pem(der))
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from licentia.vault.x509build import read_certificate, to_pem

    with _vault(args) as v:
        der = v.sign_csr(args.ca, _read(args.csr, "request"), days=args.days, now=_now())
    info = read_certificate(der)
    _note(f"issued {info.subject} serial {info.serial:x} until {info.not_after:%Y-%m-%d}")
    _write(args.out, to_pem(der))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        entry = v.import_certificate(
            _read(args.certificate, "certificate"),
            label=args.label,
            authority=args.ca,
            replace=args.replace,
        )
        print(f"stored in token '{v.token_label}': {_entry_line(entry).strip()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from licentia.vault.x509build import to_pem

    with _vault(args) as v:
        der = v.certificate(args.label)
    _write(args.out, der if args.der else to_pem(der))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        count = v.delete(args.label)
        print(f"deleted '{args.label}' from token '{v.token_label}' ({count} objects)")
    return 0


def cmd_export_pkcs12(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import KeyKind
    from licentia.vault.vault import PKCS12_WARNING
    from licentia.vault.x509build import parse_subject, subject_text

    password = _secret(
        args.password_file, "LICENTIA_PKCS12_PASSWORD", "PKCS#12 password", confirm=True
    )
    name = args.name or _common_name(subject_text(parse_subject(args.subject)))
    with _vault(args) as v:
        data = v.export_pkcs12(
            args.ca,
            args.subject,
            password,
            name=name,
            kind=KeyKind(args.type),
            dns=args.dns,
            ips=args.ip,
            days=args.days,
            now=_now(),
        )
    _write(args.out, data, private=True)
    _note(PKCS12_WARNING)
    return 0


def _common_name(subject: str) -> str:
    for part in subject.split(","):
        if part.startswith("CN="):
            return (
                "".join(ch if ch.isalnum() or ch in "._@-" else "-" for ch in part[3:])[:64]
                or "key"
            )
    return "key"


def cmd_import_pkcs12(args: argparse.Namespace) -> int:
    from licentia.vault.vault import PKCS12_WARNING

    data = _read(args.file, "PKCS#12 file")
    password = _secret(args.password_file, "LICENTIA_PKCS12_PASSWORD", "PKCS#12 password")
    with _vault(args) as v:
        entry = v.import_pkcs12(data, password, label=args.label)
        print(f"stored in token '{v.token_label}': {_entry_line(entry).strip()}")
    _note(PKCS12_WARNING)
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    with _vault(args) as v:
        data = v.request()
        label, serial = v.token_label, v.token_serial
    _write(args.out, data)
    from licentia.crypto.x509 import digest
    from licentia.vault.package import Request

    fingerprint = digest(Request.decode(data).transport_key).hex()
    print(f"request for token '{label}' serial {serial} written to {args.out}")
    print(f"transport key SHA-256 {fingerprint} (let the CA compare it out of band)")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import KeyKind
    from licentia.vault.package import Request

    request = _read(args.request, "request")
    target = Request.decode(request)
    with _vault(args) as v:
        data = v.package(
            args.ca,
            request,
            args.subject,
            label=args.label,
            kind=KeyKind(args.type),
            dns=args.dns,
            ips=args.ip,
            days=args.days,
            now=_now(),
        )
    _write(args.out, data)
    from licentia.crypto.x509 import digest

    print(
        f"package for token '{target.token_label}' serial {target.token_serial} written to {args.out}"
    )
    print(
        f"transport key SHA-256 {digest(target.transport_key).hex()} (the one the request names: "
        "it must equal what `licentia vault request` printed on the target token)"
    )
    return 0


def cmd_unpackage(args: argparse.Namespace) -> int:
    data = _read(args.package, "package")
    ca = _read(args.ca, "CA certificate") if args.ca else None
    with _vault(args) as v:
        entry = v.unpackage(data, trusted_ca=ca)
        print(f"stored in token '{v.token_label}': {_entry_line(entry).strip()}")
    return 0


def cmd_change_pin(args: argparse.Namespace) -> int:
    old = _pin(args)
    new = _secret(args.new_pin_file, "LICENTIA_NEW_PIN", "new user PIN", confirm=True)
    from licentia.vault.vault import open_vault

    with open_vault(
        args.module, token=args.token, slot=args.slot, pin=old, for_pin_change=True
    ) as v:
        v.change_pin(old, new)
        print(f"the user PIN of token '{v.token_label}' is changed")
    return 0


def cmd_uri(args: argparse.Namespace) -> int:
    """Anyone may run it: the URI names public facts, so no PIN is asked and none is tried.

    Without a login only public objects are visible; an entry's key is known by its public
    key or its certificate (every entry the vault makes has one or both)."""
    from licentia.containers.pkcs11 import open_public_session
    from licentia.vault.openssl import pkcs11_uri
    from licentia.vault.vault import RESERVED_PREFIX

    with open_public_session(args.module, label=args.token, slot=args.slot) as session:
        token_label = session.info.label
        kinds = {
            o.object_class
            for o in session.objects()
            if o.label == args.label and not o.label.startswith(RESERVED_PREFIX)
        }
    needed = {
        "private": {"public-key", "certificate"},
        "public": {"public-key"},
        "cert": {"certificate"},
    }[args.object_type]
    if not kinds & needed:
        what = {"private": "entry", "public": "public key", "cert": "certificate"}[args.object_type]
        raise LicentiaError(
            ErrorCode.TOKEN_OBJECT_NOT_FOUND,
            f"token '{token_label}' has no {what} labelled '{args.label}'"
            + (f" (it has: {', '.join(sorted(kinds))})" if kinds else ""),
        )
    print(pkcs11_uri(token_label, args.label, object_type=args.object_type, pin_source=args.pin_source))
    return 0


def cmd_openssl_conf(args: argparse.Namespace) -> int:
    from licentia.containers.pkcs11 import find_module
    from licentia.vault.openssl import engine_config, find_engine

    if find_engine() is None:
        _note("note: libp11's engine is not installed (Debian package libengine-pkcs11-openssl)")
    _write(args.out, engine_config(str(find_module(args.module))).encode())
    return 0
