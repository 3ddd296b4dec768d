"""licentia's cryptography, as named recipes. Nothing outside this package picks an algorithm.

- `recipes`: sign/verify, seal/unseal, seal_to/open_sealed, derive, passphrase wrapping,
  agreed keys (`KeyAgreement`) and MACs (`MacKey`, `mac`);
- `fuzzy`: binding a secret to machine properties (the fingerprint is the key);
- `shamir`: the secret sharing `fuzzy` is built on;
- `artifacts`: signed, versioned artifacts (magic, version, length, body, signature);
- `clock`: signed time from the vendor side.
"""

from __future__ import annotations

# Loaded on first use, like licentia.model: a protected program pays only for what it calls.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from licentia.crypto.recipes import (
        InvalidArtifact as InvalidArtifact,
        KeyAgreement as KeyAgreement,
        MacKey as MacKey,
        box_public_key as box_public_key,
        check_password as check_password,
        derive as derive,
        digest as digest,
        equal as equal,
        hash_password as hash_password,
        key_id as key_id,
        keyed_digest as keyed_digest,
        mac as mac,
        new_box_key as new_box_key,
        new_key as new_key,
        new_signing_key as new_signing_key,
        open_hidden_data as open_hidden_data,
        open_sealed as open_sealed,
        random_bytes as random_bytes,
        seal as seal,
        seal_hidden_data as seal_hidden_data,
        seal_to as seal_to,
        sign as sign,
        signing_public_key as signing_public_key,
        unseal as unseal,
        unwrap_with_passphrase as unwrap_with_passphrase,
        verify as verify,
        wrap_with_passphrase as wrap_with_passphrase,
    )

__all__ = [
    "InvalidArtifact",
    "KeyAgreement",
    "MacKey",
    "box_public_key",
    "check_password",
    "derive",
    "digest",
    "equal",
    "hash_password",
    "key_id",
    "keyed_digest",
    "mac",
    "new_box_key",
    "new_key",
    "new_signing_key",
    "open_hidden_data",
    "open_sealed",
    "random_bytes",
    "seal",
    "seal_hidden_data",
    "seal_to",
    "sign",
    "signing_public_key",
    "unseal",
    "unwrap_with_passphrase",
    "verify",
    "wrap_with_passphrase",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'licentia.crypto' has no attribute {name!r}")
    # __import__, not importlib: importlib loads warnings, ~2 ms of a program's start
    value = getattr(__import__("licentia.crypto.recipes", fromlist=(name,)), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
