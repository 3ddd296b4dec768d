"""Shamir secret sharing over GF(2^8), byte by byte, for a secret of any length.

Each byte of the secret is the constant term of its own random polynomial of degree
`threshold - 1` over GF(2^8) (the AES field, reduction polynomial x^8 + x^4 + x^3 + x + 1).
Share `x` holds the values of all those polynomials at `x`, one byte per secret byte.
Any `threshold` shares rebuild the secret by Lagrange interpolation at 0; fewer reveal
nothing about it (every secret is equally consistent with them).

The share arithmetic is constant-table driven: `_EXP`/`_LOG` for the field, and whole
share strings are multiplied by a field constant with `bytes.translate`, so the cost is
O(count x threshold) Python steps, each over the full secret length in C.

`combine` cannot tell a right result from a wrong one: fed fewer than `threshold`
shares (or shares of different secrets) it returns some other bytes. Callers that
need to know (`licentia.crypto.fuzzy`) keep a commitment to the secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache

__all__ = ["MAX_SHARES", "ShareTable", "combine", "interpolate", "secret_at_zero", "split"]

MAX_SHARES = 255  # x-coordinates are the non-zero elements of GF(2^8)

_POLY = 0x11B  # x^8 + x^4 + x^3 + x + 1
_GENERATOR = 0x03  # generates the multiplicative group of GF(2^8) under _POLY


def _tables() -> tuple[bytes, bytes]:
    exp = bytearray(510)
    log = bytearray(256)
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        # value *= 3, i.e. value ^ (value * 2), reduced by the field polynomial
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= _POLY
        value ^= doubled
    for power in range(255, 510):  # doubled so exp[log a + log b] needs no modulo
        exp[power] = exp[power - 255]
    return bytes(exp), bytes(log)


_EXP, _LOG = _tables()


def _mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


@lru_cache(maxsize=256)
def _mul_table(c: int) -> bytes:
    """The 256-byte translation table for multiplying every byte by the constant `c`."""
    return bytes(_mul(c, v) for v in range(256))


_MUL_TABLES = tuple(_mul_table(c) for c in range(256))


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(n, "little")


def split(
    secret: bytes,
    threshold: int,
    count: int,
    *,
    rng: Callable[[int], bytes] = os.urandom,
) -> list[tuple[int, bytes]]:
    """Split `secret` into `count` shares, any `threshold` of which rebuild it.

    Returns `(x, y)` pairs with x = 1..count and `len(y) == len(secret)`.
    `rng(n)` must return n uniformly random bytes (the default is the OS generator).
    """
    if not isinstance(secret, bytes | bytearray | memoryview):
        raise TypeError("secret must be bytes")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise TypeError("threshold must be an int")
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError("count must be an int")
    if not 1 <= count <= MAX_SHARES:
        raise ValueError(f"share count must be between 1 and {MAX_SHARES}, got {count}")
    if not 1 <= threshold <= count:
        raise ValueError(
            f"threshold must be between 1 and the share count {count}, got {threshold}"
        )
    secret = bytes(secret)
    length = len(secret)
    # coefficients[0] is the secret; coefficients[k] holds the k-th coefficient of
    # every byte's polynomial.
    coefficients = [secret]
    if threshold > 1:
        randomness = rng((threshold - 1) * length)
        if not isinstance(randomness, bytes) or len(randomness) != (threshold - 1) * length:
            raise ValueError("rng returned the wrong number of bytes")
        coefficients.extend(randomness[k * length : (k + 1) * length] for k in range(threshold - 1))
    shares: list[tuple[int, bytes]] = []
    for x in range(1, count + 1):
        table = _mul_table(x)
        accumulator = coefficients[-1]
        for coefficient in reversed(coefficients[:-1]):  # Horner
            accumulator = _xor(accumulator.translate(table), coefficient)
        shares.append((x, accumulator))
    return shares


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """Rebuild the secret from shares by Lagrange interpolation at 0.

    Pass at least `threshold` shares of one split; with fewer, the result is some other
    byte string of the same length (this function cannot know the threshold).
    Raises ValueError on no shares, an x outside 1..255, a repeated x, or shares of
    different lengths.
    """
    xs, ys = _checked(shares)
    return secret_at_zero(xs, ys)


def secret_at_zero(xs: Sequence[int], ys: Sequence[bytes]) -> bytes:
    """`combine` without its checks, for a caller that made the shares itself: distinct x
    in 1..255 and values of one length, in two parallel sequences (at least one)."""
    # In the log domain: L_i(0) = prod_j x_j / (x_i * prod_{j != i} (x_i ^ x_j)), so
    # log L_i(0) = sum log x_j - log x_i - sum_{j != i} log(x_i ^ x_j), mod 255.
    log = _LOG
    logs = [log[x] for x in xs]
    total = sum(logs)
    tables = _MUL_TABLES
    exp = _EXP
    out = 0
    for xi, yi, li in zip(xs, ys, logs, strict=True):
        d = sum([log[xi ^ xj] for xj in xs if xj != xi])
        out ^= int.from_bytes(yi.translate(tables[exp[(total - li - d) % 255]]), "little")
    return out.to_bytes(len(ys[0]), "little")


def _checked(shares: Sequence[tuple[int, bytes]]) -> tuple[list[int], list[bytes]]:
    if isinstance(shares, str | bytes) or len(shares) == 0:
        raise ValueError("combine needs at least one share")
    xs: list[int] = []
    ys: list[bytes] = []
    for share in shares:
        if not isinstance(share, tuple) or len(share) != 2:
            raise ValueError("a share is an (x, y) pair")
        x, y = share
        if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_SHARES:
            raise ValueError(f"share x-coordinate must be an int between 1 and {MAX_SHARES}")
        if not isinstance(y, bytes | bytearray | memoryview):
            raise ValueError("share value must be bytes")
        xs.append(x)
        ys.append(bytes(y))
    if len(set(xs)) != len(xs):
        raise ValueError("shares repeat an x-coordinate")
    length = len(ys[0])
    if any(len(y) != length for y in ys):
        raise ValueError("shares have different lengths")
    return xs, ys


def interpolate(shares: Sequence[tuple[int, bytes]], at: int) -> bytes:
    """The value at `at` (0..255) of the polynomials through `shares`; at 0 that is the secret.

    With `threshold` shares of one split, the value at x is that split's share x, so a
    caller can tell which other shares lie on the same polynomials. Refuses what
    `combine` refuses.
    """
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= MAX_SHARES:
        raise ValueError(f"the point to interpolate at must be an int between 0 and {MAX_SHARES}")
    xs, ys = _checked(shares)
    length = len(ys[0])
    for xi, yi in zip(xs, ys, strict=True):
        if xi == at:
            return yi
    result = bytes(length)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        # Lagrange basis at `at`: prod over j != i of (at - x_j) / (x_i - x_j); minus is xor.
        basis = 1
        for j, xj in enumerate(xs):
            if j != i:
                basis = _mul(basis, _div(at ^ xj, xi ^ xj))
        result = _xor(result, yi.translate(_mul_table(basis)))
    return result



class ShareTable:
    """Interpolation at 0 over many subsets of one list of shares.

    For a search that tries many sets (licentia.crypto.fuzzy): the log-domain differences
    log(x_i ^ x_j) of every pair are computed once, so a subset costs its size squared in
    additions done by C loops (`sum(map(...))`) and one table lookup per share, not
    Python-level field arithmetic. The caller guarantees distinct x in 1..255 and values
    of one length.
    """

    __slots__ = ("_logx", "_rows", "_ys")

    def __init__(self, shares: Sequence[tuple[int, bytes]]) -> None:
        xs = [x for x, _ in shares]
        self._ys = [bytes(y) for _, y in shares]
        self._logx = [_LOG[x] for x in xs]
        # log(x_i ^ x_i) is _LOG[0] = 0, so a row may be summed over a whole subset
        self._rows = [[_LOG[xi ^ xj] for xj in xs] for xi in xs]

    def secret(self, indices: Sequence[int]) -> bytes:
        """The value at 0 of the polynomial through the shares at `indices` (at least one)."""
        logx, rows, ys, exp, tables = self._logx, self._rows, self._ys, _EXP, _MUL_TABLES
        total = sum(map(logx.__getitem__, indices))
        out = 0
        for i in indices:
            e = (total - logx[i] - sum(map(rows[i].__getitem__, indices))) % 255
            out ^= int.from_bytes(ys[i].translate(tables[exp[e]]), "little")
        return out.to_bytes(len(ys[indices[0]]), "little")
