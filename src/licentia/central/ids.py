"""Human-typable identifiers of the back office: tickets and customer ids; host names.

A ticket is `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`: 24 random characters (about 117 bits) and
one check character, from a 30-letter alphabet without look-alikes (no 0/O, 1/I/L, U).
The check character is Luhn mod N over the alphabet, so every single mistyped character
and nearly every swap of two neighbours is caught before a database is asked. A customer id is
`C-XXXXX-XXXXX` in the same alphabet (9 random characters and a check character).

Input is forgiving: case, spaces and missing hyphens do not matter.
"""

from __future__ import annotations

import re
import secrets

from licentia.model import ErrorCode, LicentiaError

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_N = len(ALPHABET)

TICKET_GROUPS = 5
GROUP = 5


def check_character(body: str) -> str:
    """Luhn mod N check character for `body` (characters of ALPHABET)."""
    factor = 2
    total = 0
    for ch in reversed(body):
        addend = factor * _INDEX[ch]
        factor = 1 if factor == 2 else 2
        total += addend // _N + addend % _N
    return ALPHABET[(_N - total % _N) % _N]


def _valid_check(chars: str) -> bool:
    return check_character(chars[:-1]) == chars[-1]


def _group(chars: str) -> str:
    return "-".join(chars[i : i + GROUP] for i in range(0, len(chars), GROUP))


def new_ticket() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(TICKET_GROUPS * GROUP - 1))
    return _group(body + check_character(body))


def _clean(text: str) -> str:
    return re.sub(r"[\s-]", "", text).upper()


def parse_ticket(text: str) -> str:
    """The canonical form of a ticket, or a refusal that says what is wrong with it."""
    chars = _clean(text)
    if len(chars) != TICKET_GROUPS * GROUP:
        raise LicentiaError(
            ErrorCode.TICKET_INVALID,
            f"{text!r} is not a ticket: a ticket has {TICKET_GROUPS * GROUP} characters "
            "in groups of five, like 7KQ4M-2XAZB-…",
        )
    bad = sorted({c for c in chars if c not in _INDEX})
    if bad:
        raise LicentiaError(
            ErrorCode.TICKET_INVALID,
            f"{text!r} is not a ticket: it contains {''.join(bad)!r}, which tickets never use "
            "(no 0, 1, I, L, O or U)",
        )
    if not _valid_check(chars):
        raise LicentiaError(
            ErrorCode.TICKET_INVALID, f"{text!r} is not a ticket: a character is mistyped (check failed)"
        )
    return _group(chars)


def new_customer_id() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(9))
    chars = body + check_character(body)
    return "C-" + _group(chars)


def parse_customer_id(text: str) -> str:
    chars = _clean(text)
    if chars.startswith("C"):
        chars = chars[1:]
    if len(chars) != 10 or any(c not in _INDEX for c in chars) or not _valid_check(chars):
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"{text!r} is not a customer id; customer ids look like C-7KQ4M-2XAZB",
        )
    return "C-" + _group(chars)


_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_host_name(name: str) -> str:
    """A license server's host name: labels of ASCII letters, digits and hyphens, separated
    by dots (a short name like `licsrv-01` or a fully qualified one like `licsrv-01.example.com`).

    Each label has 1-63 characters and neither starts nor ends with a hyphen; the whole name
    has at most 253 characters and no trailing dot. Returned in lower case.
    """
    if not isinstance(name, str) or not name:
        raise LicentiaError(ErrorCode.HOST_NAME_INVALID, "a license server needs a host name")
    if len(name) > 253:
        raise LicentiaError(
            ErrorCode.HOST_NAME_INVALID,
            f"host name {name[:40]!r}… is too long ({len(name)} characters; at most 253)",
        )
    for label in name.split("."):
        if len(label) > 63:
            raise LicentiaError(
                ErrorCode.HOST_NAME_INVALID,
                f"host name {name!r} is refused: its part {label[:20]!r}… is too long ({len(label)} characters; "
                "at most 63 between two dots)",
            )
        if not _HOST_LABEL.fullmatch(label):
            raise LicentiaError(
                ErrorCode.HOST_NAME_INVALID,
                f"host name {name!r} is refused: host names may use only ASCII letters, digits "
                "and hyphens, with dots between the parts of a fully qualified name (no spaces, "
                "underscores, accents or other scripts; a hyphen neither first nor last in a part; "
                "no empty part); rename the license server and register it again",
            )
    return name.lower()
