"""TLS for the network listener (server side) and for this runtime's connections to servers.

The server certificate is created at first start (`tls/server.crt`, `tls/server.key`,
EC P-256, self-signed) unless the configuration names a certificate an administrator's
CA signed. Clients pin the certificate on first use (`tls/pins/HOST_PORT.pin`) or trust
the configured CA.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from pathlib import Path

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError
from licentia.protocol.tls import client_context, fingerprint
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.home import RuntimeHome


def server_files(home: RuntimeHome, config: RuntimeConfig) -> tuple[Path, Path]:
    """The certificate and key the network listener uses; made at first start if missing."""
    if config.certificate or config.private_key:
        if not (config.certificate and config.private_key):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                "give both [network] certificate and private_key, or neither")
        return config.path(home.path, config.certificate), config.path(home.path, config.private_key)
    cert, key = home.tls / "server.crt", home.tls / "server.key"
    if not (cert.exists() and key.exists()):
        from licentia.crypto.tls import self_signed_server_certificate

        host = socket.gethostname()
        names = [host, "localhost", "127.0.0.1", "::1"]
        if config.network_address not in ("0.0.0.0", "::", ""):
            names.append(config.network_address)
        cert_pem, key_pem = self_signed_server_certificate(f"licentia runtime {host}", names, int(time.time()))
        atomic_write(key, key_pem, mode=0o600)
        atomic_write(cert, cert_pem, mode=0o644)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"cannot load the server certificate {cert}: {exc}") from None
    return ctx


def certificate_pin(cert: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return fingerprint(der)


def pin_file(home: RuntimeHome, address: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", address).strip("_")
    return home.tls / "pins" / f"{safe}.pin"


def client_context_for(home: RuntimeHome, config: RuntimeConfig, address: str) -> ssl.SSLContext:
    """Trust a server by the configured CA, else by its pin (stored at the first connection)."""
    if config.ca_file:
        return client_context(ca_file=config.path(home.path, config.ca_file))
    return client_context(pin_file=pin_file(home, address))
