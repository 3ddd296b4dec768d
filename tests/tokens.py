"""Throw-away SoftHSM2 tokens for tests.

Each token store lives in its own directory with its own ``softhsm2.conf``; the store is
selected through ``$SOFTHSM2_CONF`` (which SoftHSM2 reads when the module is initialised;
``licentia.containers.pkcs11.load_module`` re-initialises the module when it changes).
Tokens are made with the real ``softhsm2-util``; everything is removed afterwards.

Use the ``soft_token`` fixture (one token, environment set for the test) or the
``token_store`` factory fixture (several tokens in one store), or the context managers
directly outside pytest. A test module makes them available with::

    from tokens import soft_token, token_store  # noqa: F401  (pytest fixtures)

after putting this directory on ``sys.path`` (``tests/vault/conftest.py`` shows how).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SOFTHSM_UTIL = "softhsm2-util"
DEFAULT_PIN = "1234"
DEFAULT_SO_PIN = "12345678"
_TIMEOUT = 30


def softhsm_module() -> str | None:
    """Path of libsofthsm2.so, or None when SoftHSM2 is not installed."""
    from licentia.containers.pkcs11 import SOFTHSM_PATHS

    for candidate in SOFTHSM_PATHS:
        if Path(candidate).is_file():
            return candidate
    return None


def require_softhsm() -> str:
    """The module path; skips the calling test (naming the package) when it is missing."""
    module = softhsm_module()
    if module is None or shutil.which(SOFTHSM_UTIL) is None:
        pytest.skip(
            "SoftHSM2 is not installed (Debian package softhsm2; scripts/system-packages.sh)"
        )
    return module


@dataclass(frozen=True)
class SoftToken:
    """One initialised token in a private SoftHSM2 store."""

    label: str
    pin: str
    so_pin: str
    serial: str
    slot: int
    store: TokenStore


@dataclass
class TokenStore:
    """A SoftHSM2 token directory and its configuration file."""

    directory: Path
    module: str
    tokens: list[SoftToken] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.directory / "softhsm2.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes (openssl, pkcs11-tool, licentia) using this store."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def add_token(
        self, label: str = "test", *, pin: str = DEFAULT_PIN, so_pin: str = DEFAULT_SO_PIN
    ) -> SoftToken:
        """Initialise a new token in the first free slot of this store."""
        result = subprocess.run(
            [
                SOFTHSM_UTIL,
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin,
                "--pin",
                pin,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"softhsm2-util --init-token failed: {result.stderr or result.stdout}"
            )
        # a module this process already initialised sees new tokens only after this; the
        # token containers this process has open on other tokens carry on
        from licentia.containers.token import refresh_slots

        refresh_slots(self.module)
        slot = _slot_from(result.stdout)
        serial = _serial_of(self, slot)
        token = SoftToken(label, pin, so_pin, serial, slot, self)
        self.tokens.append(token)
        return token


def _slot_from(output: str) -> int:
    # "The token has been initialized and is reassigned to slot 1234567"
    for word in reversed(output.split()):
        if word.isdigit():
            return int(word)
    raise RuntimeError(f"cannot read the slot from softhsm2-util: {output!r}")


def _serial_of(store: TokenStore, slot: int) -> str:
    result = subprocess.run(
        [SOFTHSM_UTIL, "--show-slots"],
        env=store.env,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=True,
    )
    current: int | None = None
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith("Slot ") and line[5:].strip().isdigit():
            current = int(line[5:].strip())
        elif current == slot and line.startswith("Serial number:"):
            return line.split(":", 1)[1].strip()
    return ""


@contextmanager
def softhsm_store(parent: Path | None = None) -> Iterator[TokenStore]:
    """A fresh, empty SoftHSM2 store; $SOFTHSM2_CONF points at it while the block runs."""
    module = require_softhsm()
    directory = Path(tempfile.mkdtemp(prefix="licentia-softhsm-", dir=parent))
    (directory / "tokens").mkdir()
    (directory / "softhsm2.conf").write_text(
        f"directories.tokendir = {directory / 'tokens'}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(directory / "softhsm2.conf")
    try:
        yield TokenStore(directory, module)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def token_store() -> Iterator[TokenStore]:
    """An empty SoftHSM2 store for this test; add tokens with ``token_store.add_token()``.

    The store's directory is removed when the test ends, whatever its outcome.
    """
    with softhsm_store() as store:
        yield store


@pytest.fixture
def soft_token(token_store: TokenStore) -> SoftToken:
    """One token labelled 'test' (PIN 1234) in a store of its own."""
    return token_store.add_token("test")
