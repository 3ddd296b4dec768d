"""WebAdmin's users, log-ins and CSRF tokens.

Users live in the home's `webadmin.users` (JSON, mode 0600): a name, a role (`admin` or
`read-only`) and the password as `licentia.crypto.hash_password` stores it (scrypt, salted).
`licentia webadmin passwd USER --role admin|read-only` writes it; the runtime reads it at
each log-in, so a change needs no restart.

A log-in opens a session: a random cookie (HttpOnly, SameSite=Strict, Secure over HTTPS)
kept in memory, ending after `SESSION_SECONDS` without use or when the runtime stops. Every
form that changes something carries the session's CSRF token, compared in constant time."""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.fsutil import atomic_write
from licentia.model import ErrorCode, LicentiaError

USERS_FILE = "webadmin.users"
FORMAT = "licentia-webadmin-users"
ROLES = ("admin", "read-only")
SESSION_SECONDS = 8 * 3600.0
MAX_SESSIONS = 1000
COOKIE = "licentia_session"
FAILURES_ALLOWED = 5  # wrong passwords from one address ...
FAILURE_WINDOW = 300.0  # ... within this many seconds, then that address waits
LOCKOUT = 60.0


def users_path(home: Path) -> Path:
    return Path(home) / USERS_FILE


def read_users(path: Path) -> dict[str, dict[str, str]]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"cannot read {path}: {exc}",
                            "set the users again with `licentia webadmin passwd USER --role ROLE`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("users"), dict):
        raise LicentiaError(ErrorCode.WRONG_CONTENT, f"{path} is not a WebAdmin users file")
    return {str(k): v for k, v in doc["users"].items() if isinstance(v, dict)}


def set_user(path: Path, user: str, role: str, password: str) -> None:
    """Add the user or change their role and password (the file is rewritten atomically)."""
    from licentia.crypto import hash_password

    if role not in ROLES:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"the role must be one of {', '.join(ROLES)}")
    if not user or len(user) > 100 or any(c.isspace() or c in "\"'<>&" for c in user):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "a user name has 1 to 100 characters, no spaces or quotes")
    if len(password) < 8:
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, "a WebAdmin password has at least 8 characters")
    users = read_users(path)
    users[user] = {"role": role, "password": hash_password(password)}
    write_users(path, users)


def remove_user(path: Path, user: str) -> bool:
    users = read_users(path)
    if users.pop(user, None) is None:
        return False
    write_users(path, users)
    return True


def write_users(path: Path, users: dict[str, dict[str, str]]) -> None:
    doc = {"format": FORMAT, "version": 1, "users": users}
    atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)


@dataclass
class Session:
    user: str
    role: str
    csrf: str
    last: float

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Sessions:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}  # address -> times of wrong passwords

    def locked_out(self, address: str, now: float | None = None) -> float:
        """Seconds `address` must wait before trying a password again (0: it may try)."""
        now = time.time() if now is None else now
        times = [t for t in self._failures.get(address, ()) if now - t < FAILURE_WINDOW]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        if len(times) >= FAILURES_ALLOWED:
            return max(times[-1] + LOCKOUT - now, 0.0)
        return 0.0

    def failed(self, address: str, now: float | None = None) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(address, []).append(time.time() if now is None else now)

    def any_user(self) -> bool:
        try:
            return bool(read_users(self.path))
        except LicentiaError:
            return False

    def check_password(self, user: str, password: str) -> str | None:
        """The user's role when the password is theirs, else None (slow: scrypt; call off
        the event loop). An unknown user costs the same as a wrong password."""
        from licentia.crypto import check_password, hash_password

        try:
            entry = read_users(self.path).get(user)
        except LicentiaError:
            entry = None
        if entry is None:
            check_password(_dummy(hash_password), password)
            return None
        if not check_password(str(entry.get("password", "")), password):
            return None
        role = entry.get("role")
        return role if role in ROLES else None

    def open(self, user: str, role: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        self._expire(now)
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            for key in sorted(self._sessions, key=lambda k: self._sessions[k].last)[: MAX_SESSIONS // 10]:
                del self._sessions[key]
        token = secrets.token_urlsafe(32)
        self._sessions[token] = Session(user, role, secrets.token_urlsafe(32), now)
        return token

    def get(self, token: str | None, now: float | None = None) -> Session | None:
        if not token:
            return None
        now = time.time() if now is None else now
        s = self._sessions.get(token)
        if s is None or now - s.last > SESSION_SECONDS:
            self._sessions.pop(token, None)
            return None
        s.last = now
        return s

    def close(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if now - s.last > SESSION_SECONDS]:
            del self._sessions[key]


def csrf_ok(session: Session, sent: Any) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())


_DUMMY: list[str] = []


def _dummy(hash_password: Any) -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password(os.urandom(12).hex()))
    return _DUMMY[0]
