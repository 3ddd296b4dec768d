"""Directory groups of a user, from LDAP or Active Directory (ldap3), cached.

The access list (`licentia.core.acl`) matches group rules against the groups of the user
who asks. The runtime asks this module only when a group rule covers the item
(`AccessList.needs_groups`), so a directory that is down never blocks an access that no
group rule concerns; when it is asked and cannot answer, it gets `None` (groups unknown)
and the list decides without them (docs/admin.md).

Lookup, per user:

1. find the user's entry under `base` with `user_filter` (`{user}` is replaced by the
   escaped user name; a `DOMAIN\\user` or `user@domain` name is reduced to `user`);
2. its groups: the `memberOf` values the server reports (Active Directory; OpenLDAP with
   the memberof overlay), and the groups whose `member`/`uniqueMember` is the user's DN
   or whose `memberUid` is the user's uid (any LDAP server);
3. nested groups: with `nested = "search"` (default), groups that have one of those
   groups as a member, level by level up to `max_depth`; with `nested = "in-chain"`,
   Active Directory's LDAP_MATCHING_RULE_IN_CHAIN does it in one query; `"none"` stops at
   direct groups.

Group names are the groups' `cn`. Answers are cached for `ttl` seconds; a failed lookup
is remembered for `retry` seconds (so a down directory is not asked on every access), and
meanwhile the last good answer for the user, if any, is used until `stale` seconds old.
Every lookup is bounded by `timeout` (connect and each answer).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from licentia.model import ErrorCode, LicentiaError

DEFAULT_USER_FILTER = "(|(uid={user})(sAMAccountName={user})(userPrincipalName={user}))"
IN_CHAIN = "1.2.840.113556.1.4.1941"
NESTED_MODES = ("search", "in-chain", "none")


@dataclass(frozen=True)
class DirectoryConfig:
    url: str  # ldap://host:389 or ldaps://host:636 (several: space-separated, tried in order)
    base: str
    bind_dn: str = ""
    password: str = ""
    user_filter: str = DEFAULT_USER_FILTER
    nested: str = "search"
    max_depth: int = 8
    ttl: float = 300.0
    retry: float = 30.0
    stale: float = 3600.0
    timeout: float = 3.0
    start_tls: bool = False

    def __post_init__(self) -> None:
        def bad(why: str) -> LicentiaError:
            return LicentiaError(ErrorCode.INVALID_PARAMETER, f"directory: {why}",
                                 "see the [directory] settings in docs/admin.md")

        if not self.url or not all(u.startswith(("ldap://", "ldaps://")) for u in self.url.split()):
            raise bad(f"url {self.url!r} must start with ldap:// or ldaps://")
        if not self.base:
            raise bad("a search base (e.g. dc=example,dc=org) is needed")
        if "{user}" not in self.user_filter:
            raise bad("user_filter must contain {user}")
        if self.nested not in NESTED_MODES:
            raise bad(f"nested {self.nested!r} is not one of {', '.join(NESTED_MODES)}")
        if not (self.ttl > 0 and self.retry > 0 and self.timeout > 0 and self.stale >= 0):
            raise bad("ttl, retry and timeout must be positive numbers of seconds")

    @classmethod
    def from_settings(cls, settings: Any, home: Path) -> DirectoryConfig | None:
        """From the runtime's settings (`[directory]` of runtime.toml); None when no url is set."""
        url = str(getattr(settings, "directory_url", "") or "")
        if not url:
            return None
        password = ""
        password_file = str(getattr(settings, "directory_password_file", "") or "")
        if password_file:
            path = Path(password_file) if Path(password_file).is_absolute() else home / password_file
            try:
                password = path.read_text().rstrip("\r\n")
            except OSError as exc:
                raise LicentiaError(ErrorCode.INVALID_PARAMETER,
                                    f"directory: cannot read the password file {path}: {exc.strerror}") from None
        return cls(url=url, base=str(settings.directory_base), bind_dn=str(settings.directory_bind_dn),
                   password=password, user_filter=str(settings.directory_user_filter or DEFAULT_USER_FILTER),
                   nested=str(settings.directory_nested), ttl=float(settings.directory_ttl),
                   timeout=float(settings.directory_timeout), start_tls=bool(settings.directory_start_tls))


def plain_user(name: str) -> str:
    """`DOMAIN\\user` and `user@domain` → `user` (what the directory's uid holds)."""
    if "\\" in name:
        name = name.rsplit("\\", 1)[1]
    if "@" in name:
        name = name.split("@", 1)[0]
    return name


class DirectoryError(Exception):
    """The directory could not be asked (down, refused the bind, timed out)."""


def lookup_groups(config: DirectoryConfig, user: str) -> frozenset[str]:
    """Ask the directory now (blocking): the user's groups, nested as configured. An
    unknown user has no groups. Raises `DirectoryError` when the directory cannot answer."""
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars

    name = plain_user(user)
    if not name:
        return frozenset()
    # ldap3 packs the receive timeout into a socket option as a whole number of seconds
    timeout = max(1, math.ceil(config.timeout))
    servers = [ldap3.Server(u, connect_timeout=timeout, get_info=ldap3.NONE) for u in config.url.split()]
    pool: Any = servers[0] if len(servers) == 1 else ldap3.ServerPool(servers, ldap3.FIRST, active=1, exhaust=True)
    try:
        conn = ldap3.Connection(pool, user=config.bind_dn or None, password=config.password or None,
                                receive_timeout=timeout, read_only=True, raise_exceptions=True)
        try:
            if config.start_tls:
                conn.open()
                conn.start_tls()
            conn.bind()
            conn.search(config.base, config.user_filter.replace("{user}", escape_filter_chars(name)),
                        attributes=["memberOf", "uid"], size_limit=2)
            if not conn.entries:
                return frozenset()
            entry = conn.entries[0]
            user_dn = str(entry.entry_dn)
            attrs = entry.entry_attributes_as_dict
            uid = str((attrs.get("uid") or [name])[0])
            esc_dn = escape_filter_chars(user_dn)
            names: set[str] = set()
            seen: set[str] = set()
            if config.nested == "in-chain":
                return frozenset(cn for _dn, cn in _groups(conn, config.base, f"(member:{IN_CHAIN}:={esc_dn})") if cn)
            direct = {str(v).casefold(): str(v) for v in attrs.get("memberOf", [])}
            level = _collect(_groups(conn, config.base, f"(|(member={esc_dn})(uniqueMember={esc_dn})"
                                                         f"(memberUid={escape_filter_chars(uid)}))"), names, seen)
            for dn in direct.values():
                if dn.casefold() not in seen:
                    seen.add(dn.casefold())
                    level.append(dn)
                    conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["cn"])
                    names.update(str(e.entry_attributes_as_dict["cn"][0]) for e in conn.entries
                                 if e.entry_attributes_as_dict.get("cn"))
            depth = 0
            while level and config.nested == "search" and depth < config.max_depth:
                depth += 1
                above: list[str] = []
                for i in range(0, len(level), 100):  # the groups that have these as members, 100 at a time
                    terms = "".join(f"(member={escape_filter_chars(dn)})(uniqueMember={escape_filter_chars(dn)})"
                                    for dn in level[i:i + 100])
                    above += _collect(_groups(conn, config.base, f"(|{terms})"), names, seen)
                level = above
            return frozenset(names)
        finally:
            conn.unbind()
    except LDAPException as exc:
        raise DirectoryError(f"{config.url}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise DirectoryError(f"{config.url}: {exc}") from None


def _groups(conn: Any, base: str, query: str) -> list[tuple[str, str]]:
    """(DN, cn) of every entry `query` finds, page by page (Active Directory answers at
    most 1000 entries per page)."""
    out = []
    for e in conn.extend.standard.paged_search(base, query, attributes=["cn"], paged_size=500, generator=True):
        if e.get("type") != "searchResEntry":
            continue
        cn = e.get("attributes", {}).get("cn") or []
        if isinstance(cn, list):
            cn = cn[0] if cn else ""
        out.append((str(e["dn"]), str(cn)))
    return out


def _collect(found: Iterable[tuple[str, str]], names: set[str], seen: set[str]) -> list[str]:
    """Add the groups found; the DNs not seen before (the next level to climb)."""
    fresh = []
    for dn, cn in found:
        if cn:
            names.add(cn)
        if dn.casefold() not in seen:
            seen.add(dn.casefold())
            fresh.append(dn)
    return fresh


class Directory:
    """Cached group lookups for the runtime. `now` is a monotonic time in seconds."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        # user (casefolded) -> (groups, when asked); failures: user -> when it failed
        self._cache: dict[str, tuple[frozenset[str], float]] = {}
        self._failed: dict[str, float] = {}
        self.last_error: str | None = None
        self.lookups = 0

    def cached(self, user: str, now: float) -> frozenset[str] | None:
        """The fresh cached groups of `user`, or None (without asking anyone)."""
        hit = self._cache.get(user.casefold())
        if hit is not None and now - hit[1] < self.config.ttl:
            return hit[0]
        return None

    def groups(self, user: str, now: float) -> frozenset[str] | None:
        """The groups of `user` (blocking on a cache miss); None when the directory cannot
        answer and no answer younger than `stale` seconds is at hand."""
        key = user.casefold()
        hit = self._cache.get(key)
        if hit is not None and now - hit[1] < self.config.ttl:
            return hit[0]
        failed = self._failed.get(key)
        if failed is not None and now - failed < self.config.retry:
            return self._stale(hit, now)
        with self._lock:
            self.lookups += 1
            try:
                found = lookup_groups(self.config, user)
            except DirectoryError as exc:
                self.last_error = str(exc)
                self._failed[key] = now
                if len(self._failed) > 100_000:
                    self._failed.clear()
                return self._stale(hit, now)
            self._failed.pop(key, None)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = (found, now)
            self.last_error = None
            return found

    async def groups_async(self, user: str, now: float) -> frozenset[str] | None:
        """`groups` off the event loop (a cache hit answers at once)."""
        hit = self.cached(user, now)
        if hit is not None:
            return hit
        return await asyncio.to_thread(self.groups, user, now)

    def forget(self, user: str | None = None) -> None:
        if user is None:
            self._cache.clear()
            self._failed.clear()
        else:
            self._cache.pop(user.casefold(), None)
            self._failed.pop(user.casefold(), None)

    def _stale(self, hit: tuple[frozenset[str], float] | None, now: float) -> frozenset[str] | None:
        if hit is not None and now - hit[1] < self.config.stale:
            return hit[0]
        return None
