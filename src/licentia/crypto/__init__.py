"""licentia's cryptography, as named recipes. Nothing outside this package picks an algorithm.

- `recipes`: sign/verify, seal/unseal, seal_to/open_sealed, derive, passphrase wrapping;
- `fuzzy`: binding a secret to machine properties (the fingerprint is the key);
- `shamir`: the secret sharing `fuzzy` is built on;
- `artifacts`: signed, versioned artifacts (magic, version, length, body, signature);
- `clock`: signed time from the vendor side.
"""

from licentia.crypto.recipes import (
    InvalidArtifact,
    box_public_key,
    derive,
    digest,
    equal,
    key_id,
    keyed_digest,
    new_box_key,
    new_key,
    new_signing_key,
    open_hidden_data,
    open_sealed,
    random_bytes,
    seal,
    seal_hidden_data,
    seal_to,
    sign,
    signing_public_key,
    unseal,
    unwrap_with_passphrase,
    verify,
    wrap_with_passphrase,
)

__all__ = [
    "InvalidArtifact", "box_public_key", "derive", "digest", "equal", "key_id",
    "keyed_digest", "new_box_key", "new_key", "new_signing_key", "open_hidden_data", "open_sealed",
    "random_bytes", "seal", "seal_hidden_data", "seal_to", "sign", "signing_public_key", "unseal",
    "unwrap_with_passphrase", "verify", "wrap_with_passphrase",
]
