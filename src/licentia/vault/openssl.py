"""Using vault keys from standard tools: PKCS#11 URIs (RFC 7512) and an OpenSSL engine config.

OpenSSL 3 on Debian 12 reaches PKCS#11 tokens through libp11's engine
(libengine-pkcs11-openssl; the pkcs11-provider is not packaged there). GnuTLS takes
PKCS#11 URIs directly (`gnutls-serv --provider MODULE --x509keyfile 'pkcs11:...'`).

libp11 0.4.12 finds *no* private key at all on a token that also holds an Ed25519
(CKK_EC_EDWARDS) key; keep TLS keys on a token (or slot) without Ed25519 keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import quote

ENGINE_PATHS: Final[tuple[str, ...]] = (
    "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/engines-3/pkcs11.so",
    "/usr/lib64/engines-3/pkcs11.so",
    "/usr/lib/engines-3/pkcs11.so",
)

# RFC 7512 pk11-pchar: unreserved characters plus ":[]@!$'()*+,=&" stay; the rest is %-encoded.
_SAFE: Final = "-._~:[]@!$'()*+,=&"


def find_engine() -> Path | None:
    """libp11's OpenSSL engine, if installed."""
    for candidate in ENGINE_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def pkcs11_uri(
    token: str,
    label: str,
    *,
    object_type: str = "private",
    serial: str | None = None,
    pin_source: str | None = None,
) -> str:
    """A PKCS#11 URI naming one object, e.g. ``pkcs11:token=tls;object=web;type=private``.

    `pin_source` (e.g. ``file:/run/secrets/pin``) lets tools read the PIN from a file
    instead of a prompt; it is a query attribute, so it follows a ``?``.
    """
    parts = [f"token={quote(token, safe=_SAFE)}"]
    if serial:
        parts.append(f"serial={quote(serial, safe=_SAFE)}")
    parts.append(f"object={quote(label, safe=_SAFE)}")
    parts.append(f"type={object_type}")
    uri = "pkcs11:" + ";".join(parts)
    if pin_source:
        uri += "?pin-source=" + quote(pin_source, safe="/:")
    return uri


def engine_config(module: str, *, engine: str | None = None, pin: str | None = None) -> str:
    """An OPENSSL_CONF text that loads the pkcs11 engine for `module`.

    Without `pin`, tools ask for it or take it from the key URI (``pin-source``); writing
    the PIN into the file is for throw-away test tokens only.
    """
    engine_path = engine or str(find_engine() or ENGINE_PATHS[0])
    lines = [
        "openssl_conf = openssl_init",
        "",
        "[openssl_init]",
        "engines = engine_section",
        "",
        "[engine_section]",
        "pkcs11 = pkcs11_section",
        "",
        "[pkcs11_section]",
        "engine_id = pkcs11",
        f"dynamic_path = {engine_path}",
        f"MODULE_PATH = {module}",
    ]
    if pin is not None:
        lines.append(f"PIN = {pin}")
    lines += ["init = 0", "", "[req]", "distinguished_name = req_dn", "", "[req_dn]", ""]
    return "\n".join(lines)
