"""The seat table: who holds which license handle, and how many seats that takes.

Pure: no sockets, no files, no clock. The runtime (local or network mode) owns one
`SeatTable`, calls it for every access and release, feeds it the processes it found
dead and the time, and logs the `Event`s every change returns. docs/counting.md
states the rules; in short:

- `per-access`: every handle takes a seat;
- `per-station`: all per-station handles of one station share one seat;
- `exclusive`: one handle per station, taking a seat; it excludes every other
  seat-taking handle of the item on that station (213 both ways);
- `none`: no seat; neither counted nor subject to exclusivity.

Quantity `None` is unlimited; quantity 0 is a local-only license: granted (without
a count) only to a program on the container's own machine or VM (`local=True`),
and never to a session of a multi-user terminal server (a remote desktop to the
machine itself is fine). When every seat is taken the answer is 212, a denial event.

Handles increase monotonically and are never reused, not even across a restart:
`snapshot()` keeps the next handle, `SeatTable.restore()` brings every session back.

Complexity: `access`, `release`, `heartbeat` and `used` are O(1); `reap_processes`
is O(handles reaped); `expire_clients` is O(network clients holding handles).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple, Protocol

from licentia.model import AccessMode, ErrorCode, LicentiaError, SessionKind

DEFAULT_CLIENT_TIMEOUT = 120.0  # seconds a network client may stay silent
MIN_CLIENT_TIMEOUT = 5.0  # the shortest timeout an administrator may set

SNAPSHOT_FORMAT = "licentia.seats"
SNAPSHOT_VERSION = 1

_PER_ACCESS: Final = AccessMode.PER_ACCESS
_PER_STATION: Final = AccessMode.PER_STATION
_EXCLUSIVE: Final = AccessMode.EXCLUSIVE
_NONE: Final = AccessMode.NONE


# --------------------------------------------------------------------------- types
#
# The values that key the table's dictionaries or are made on every access
# (Station, ProcessId, ItemKey, Session, Event, Grant, Release) are NamedTuples:
# immutable, with no per-instance dict, and hashed and compared in C, three times
# faster than frozen dataclasses on the access/release path. Holder, made once per
# connection, is a frozen slots dataclass that checks itself.


class Station(NamedTuple):
    """One machine, one VM, or one terminal-server session, as the client's
    environment detection reports it. Per-station and exclusive counting key on it."""

    host_id: str
    vm_id: str = ""
    session_id: str = ""

    def __str__(self) -> str:
        parts = [self.host_id]
        if self.vm_id:
            parts.append(f"vm {self.vm_id}")
        if self.session_id:
            parts.append(f"session {self.session_id}")
        return "/".join(parts)


class ProcessId(NamedTuple):
    """A local process: its station, its PID and the start time the OS reports for it.

    The start time is part of the identity so a PID reused by a later process never
    keeps a dead program's seats."""

    station: Station
    pid: int
    start_time: float


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a handle: a local process (reaped when it dies), a network client
    (freed when its keep-alives stop), or both; plus what to show about it."""

    process: ProcessId | None = None
    client_id: str | None = None
    program: str = ""
    user: str = ""
    host: str = ""

    def __post_init__(self) -> None:
        if self.process is None and self.client_id is None:
            raise LicentiaError(
                ErrorCode.INVALID_PARAMETER,
                "a seat holder needs a process identity or a network client id",
            )

    @classmethod
    def local(
        cls,
        station: Station,
        pid: int,
        start_time: float,
        *,
        program: str = "",
        user: str = "",
        host: str = "",
    ) -> Holder:
        return cls(ProcessId(station, pid, start_time), None, program, user, host)

    @classmethod
    def network(cls, client_id: str, *, program: str = "", user: str = "", host: str = "") -> Holder:
        return cls(None, client_id, program, user, host)

    def same_as(self, other: Holder) -> bool:
        """Same identity (process and client), whatever the display fields say."""
        return self.process == other.process and self.client_id == other.client_id


class ItemKey(NamedTuple):
    """Which product item: the container serial, firm code, product code and the
    item's index in the container (several items may share a product code)."""

    container: str
    firm_code: int
    product_code: int
    item_id: int = 0

    def __str__(self) -> str:
        return f"{self.container} {self.firm_code}:{self.product_code}#{self.item_id}"


class Session(NamedTuple):
    """One granted handle."""

    handle: int
    key: ItemKey
    mode: AccessMode
    station: Station
    holder: Holder
    since: float


class EventKind(StrEnum):
    GRANT = "grant"
    DENY = "deny"
    RELEASE = "release"


_GRANT: Final = EventKind.GRANT
_RELEASE: Final = EventKind.RELEASE


class ReleaseReason(StrEnum):
    PROGRAM = "program"  # the program released its handle
    REAPED = "reaped"  # its process ended
    TIMEOUT = "timeout"  # its network client fell silent
    ADMIN = "admin"  # an administrator forced it


class Event(NamedTuple):
    """A change to log: a grant, a release (with its reason) or a denial (with its code).

    `used` is the number of the item's seats in use after the change."""

    kind: EventKind
    at: float
    key: ItemKey
    mode: AccessMode
    station: Station
    holder: Holder
    handle: int | None = None
    used: int = 0
    reason: ReleaseReason | None = None
    code: ErrorCode | None = None


# Made on every access and release: `tuple.__new__` skips the generated `__new__` (a
# Python-level call that binds each field by name), about three times faster. Every
# field is given, in order.
_make: Final[Any] = tuple.__new__


class Grant(NamedTuple):
    """A granted access. `new_seat` is False when the handle shares its station's
    seat (per-station) or takes none (mode none)."""

    session: Session
    new_seat: bool
    used: int

    @property
    def handle(self) -> int:
        return self.session.handle

    @property
    def events(self) -> tuple[Event, ...]:
        return (grant_event(self),)


class Release(NamedTuple):
    session: Session
    reason: ReleaseReason
    seat_freed: bool
    used: int
    at: float

    @property
    def handle(self) -> int:
        return self.session.handle

    @property
    def events(self) -> tuple[Event, ...]:
        return (release_event(self),)


def grant_event(grant: Grant) -> Event:
    """The event of `grant` (its `events`' only one), made for a caller that logs it."""
    s = grant.session
    event: Event = _make(Event, (_GRANT, s.since, s.key, s.mode, s.station, s.holder, s.handle, grant.used, None, None))
    return event


def release_event(release: Release) -> Event:
    """The event of `release` (its `events`' only one), made for a caller that logs it."""
    s = release.session
    event: Event = _make(Event, (_RELEASE, release.at, s.key, s.mode, s.station, s.holder, s.handle, release.used,
                                 release.reason, None))
    return event


class SeatRefused(LicentiaError):
    """An access the seat table refused (212, 213, 1006, 1007); `event` is its denial."""

    def __init__(self, code: ErrorCode, message: str, event: Event, hint: str | None = None) -> None:
        super().__init__(code, message, hint)
        self.event = event


def check_client_timeout(seconds: object) -> float:
    """Validate a network-client timeout an administrator sets (at least 5 s); `seconds` may
    be anything a configuration file holds."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"client timeout {seconds!r} is not a number of seconds")
    if seconds < MIN_CLIENT_TIMEOUT:
        raise LicentiaError(
            ErrorCode.INVALID_PARAMETER,
            f"client timeout {seconds:g} s is too short; use at least {MIN_CLIENT_TIMEOUT:g} s",
        )
    return float(seconds)


# --------------------------------------------------------------------------- the decision


class StationCounts(Protocol):
    """Handles of one item on one station, by mode: what `admit` reads of a station."""

    @property
    def per_access(self) -> int: ...
    @property
    def per_station(self) -> int: ...
    @property
    def exclusive(self) -> int: ...


def admit(
    key: ItemKey,
    quantity: int | None,
    mode: AccessMode,
    station: Station,
    holder: Holder,
    local: bool,
    session: SessionKind,
    now: float,
    used: int,
    station_use: StationCounts | None,
) -> bool:
    """May `holder` on `station` get a handle on `key`, and does it take a new seat?

    `used` is the item's seats in use, `station_use` the station's handles of the item
    (None: none). Returns whether the grant takes a seat; raises `SeatRefused` (212, 213,
    1006, 1007) or a `LicentiaError` (105, 223). Pure: every seat store (this module's
    `SeatTable`, the TMR front end's etcd store) asks it and only stores the answer."""
    use = station_use
    if quantity is not None and quantity < 1:
        if quantity != 0 or isinstance(quantity, bool):
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"license quantity {quantity!r} is not valid")
        if not local:
            raise _refuse(
                ErrorCode.LOCAL_ONLY,
                f"{key} is a local-only license (quantity 0) and the program is not on its machine",
                key, mode, station, holder, used, now,
            )
        if session is SessionKind.TERMINAL_SERVER:
            raise _refuse(
                ErrorCode.TERMINAL_SESSION_DENIED,
                f"{key} is a local-only license (quantity 0); terminal-server session {station} may not use it",
                key, mode, station, holder, used, now,
            )
        quantity = None  # local use is not counted

    if mode is _PER_ACCESS:
        if use is not None and use.exclusive:
            raise _exclusive_conflict(key, mode, station, holder, used, now, True)
        new_seat = True
    elif mode is _PER_STATION:
        if use is not None and use.exclusive:
            raise _exclusive_conflict(key, mode, station, holder, used, now, True)
        new_seat = use is None or use.per_station == 0
    elif mode is _EXCLUSIVE:
        if use is not None and (use.exclusive or use.per_access or use.per_station):
            raise _exclusive_conflict(key, mode, station, holder, used, now, bool(use.exclusive),
                                      use.per_station, use.per_access)
        new_seat = True
    elif mode is _NONE:
        new_seat = False
    else:
        raise LicentiaError(ErrorCode.WRONG_ACCESS_MODE, f"access mode {mode!r} is unknown")

    if new_seat and quantity is not None and used >= quantity:
        raise _refuse(
            ErrorCode.NO_MORE_LICENSES,
            f"all {quantity} seat{'s' if quantity != 1 else ''} of {key} are in use",
            key, mode, station, holder, used, now,
        )
    return new_seat


# --------------------------------------------------------------------------- table


class _ItemUse:
    """Seats of one item and its handles per station."""

    __slots__ = ("key", "seats", "stations")

    def __init__(self, key: ItemKey) -> None:
        self.key = key
        self.seats = 0
        self.stations: dict[Station, _StationUse] = {}


class _StationUse:
    """Handles of one item on one station, by mode."""

    __slots__ = ("exclusive", "item", "none", "per_access", "per_station", "station")

    def __init__(self, item: _ItemUse, station: Station) -> None:
        self.item = item
        self.station = station
        self.per_access = 0
        self.per_station = 0
        self.exclusive = 0
        self.none = 0


class SeatTable:
    """Seats of every item a runtime serves. Not thread-safe: one owner calls it."""

    __slots__ = ("_ceiling", "_clients", "_items", "_kept", "_last_seen", "_next_handle", "_processes", "_reserve",
                 "_sessions")

    def __init__(self, *, first_handle: int = 1) -> None:
        if isinstance(first_handle, bool) or not isinstance(first_handle, int) or first_handle < 1:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, "the first handle must be a positive integer")
        self._next_handle = first_handle
        # handles below the ceiling may be given; at it, `_reserve(next)` (the shell's, which
        # records a new high-water mark durably) returns the next ceiling (see `reserve_handles`)
        self._ceiling: int | float = float("inf")
        self._reserve: Callable[[int], int] | None = None
        # handle -> (session, its station's counters); the counters link to the item's
        self._sessions: dict[int, tuple[Session, _StationUse]] = {}
        self._items: dict[ItemKey, _ItemUse] = {}
        self._processes: dict[ProcessId, set[int]] = {}
        self._clients: dict[str, set[int]] = {}
        self._last_seen: dict[str, float] = {}
        self._kept: set[str] = set()  # clients that send no keep-alives and are never timed out

    # -- access and release ------------------------------------------------

    def access(
        self,
        *,
        key: ItemKey,
        quantity: int | None,
        mode: AccessMode,
        station: Station,
        holder: Holder,
        local: bool,
        session: SessionKind,
        now: float,
    ) -> Grant:
        """Grant a handle on `key`, or raise `SeatRefused` (a `LicentiaError`).

        `quantity` is the item's license quantity (None: unlimited; 0: local only),
        `local` says the program runs on the container's own machine or VM,
        `session` what kind of session it runs in."""
        item = self._items.get(key)
        if item is None:
            used = 0
            use = None
        else:
            used = item.seats
            use = item.stations.get(station)
        new_seat = admit(key, quantity, mode, station, holder, local, session, now, used, use)
        if holder.client_id is not None:
            self._last_seen[holder.client_id] = now
        handle = self._next_handle
        if handle >= self._ceiling and self._reserve is not None:
            self._ceiling = self._reserve(handle)
        self._next_handle = handle + 1
        sess: Session = _make(Session, (handle, key, mode, station, holder, now))
        return _make(Grant, (sess, new_seat, self._attach(sess, item, use)))  # type: ignore[no-any-return]

    def release(self, handle: int, now: float, *, holder: Holder | None = None) -> Release:
        """The program releases `handle`. With `holder`, only that holder's handle."""
        rec = self._sessions.get(handle)
        if rec is None or (holder is not None and rec[0].holder is not holder and not rec[0].holder.same_as(holder)):
            raise LicentiaError(
                ErrorCode.INVALID_HANDLE, f"handle {handle} is not held (released already, or never granted)"
            )
        return self._release(rec, _PROGRAM, now)

    def force_release(self, handle: int, now: float) -> Release:
        """An administrator frees `handle`; its program learns on its next request."""
        rec = self._sessions.get(handle)
        if rec is None:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} is not held")
        return self._release(rec, ReleaseReason.ADMIN, now)

    def reap_processes(self, dead: Iterable[ProcessId], now: float) -> tuple[Event, ...]:
        """Free every handle of processes that have ended."""
        events: list[Event] = []
        for proc in dead:
            handles = self._processes.get(proc)
            if handles:
                for handle in sorted(handles):
                    events += self._release(self._sessions[handle], ReleaseReason.REAPED, now).events
        return tuple(events)

    def heartbeat(self, client_id: str, now: float) -> bool:
        """A network client is alive. False when it holds no handle here (nothing to keep)."""
        if client_id in self._last_seen:
            self._last_seen[client_id] = now
            return True
        return False

    def expire_clients(self, now: float, timeout: float = DEFAULT_CLIENT_TIMEOUT) -> tuple[Event, ...]:
        """Free the handles of network clients silent for longer than `timeout` seconds."""
        if not timeout > 0:
            raise LicentiaError(ErrorCode.INVALID_PARAMETER, f"client timeout {timeout!r} must be positive")
        deadline = now - timeout
        kept = self._kept
        lost = [c for c, seen in self._last_seen.items() if seen < deadline and c not in kept]
        events: list[Event] = []
        for client in lost:
            for handle in sorted(self._clients.get(client, ())):
                events += self._release(self._sessions[handle], ReleaseReason.TIMEOUT, now).events
        return tuple(events)

    def keep_client(self, client_id: str, kept: bool = True) -> None:
        """Exempt `client_id` from `expire_clients` (a borrowed seat, held by no program and no
        connection, ends when its borrow ends), or (`kept=False`) no longer."""
        if kept:
            self._kept.add(client_id)
        else:
            self._kept.discard(client_id)

    # -- queries -------------------------------------------------------------

    def get(self, handle: int) -> Session:
        rec = self._sessions.get(handle)
        if rec is None:
            raise LicentiaError(ErrorCode.INVALID_HANDLE, f"handle {handle} is not held")
        return rec[0]

    def __contains__(self, handle: object) -> bool:
        return handle in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def takes_seat(self, key: ItemKey, mode: AccessMode, station: Station) -> bool:
        """Whether an access of `key` in `mode` from `station` would take a new seat (the
        access list is asked only then): not for mode none, nor for a per-station access
        on a station that already holds the item's seat."""
        if mode is _NONE:
            return False
        if mode is _PER_STATION:
            item = self._items.get(key)
            use = item.stations.get(station) if item is not None else None
            return use is None or use.per_station == 0
        return True

    def used(self, key: ItemKey) -> int:
        """Seats of `key` in use."""
        item = self._items.get(key)
        return item.seats if item is not None else 0

    def sessions(self, key: ItemKey | None = None) -> list[Session]:
        """Who holds what, oldest handle first; all items, or one."""
        if key is None:
            return [rec[0] for rec in self._sessions.values()]
        return [rec[0] for rec in self._sessions.values() if rec[0].key == key]

    def holds(self, holder: Holder) -> bool:
        """Whether `holder` (its network client, else its process) holds a handle."""
        if holder.client_id is not None:
            return holder.client_id in self._clients
        return holder.process is not None and holder.process in self._processes

    def not_held_by(self, client_id: str, handles: Iterable[int]) -> list[int]:
        """Those of `handles` that network client `client_id` does not hold (its keep-alive's
        `lost`): one set lookup each."""
        held = self._clients.get(client_id, ())
        return [h for h in handles if h not in held]

    def taken_before(self, client_id: str, before: float, named: Iterable[int] = ()) -> list[int]:
        """The handles network client `client_id` holds that it took before `before` (on an
        earlier connection) and that are not in `named`, in order: those it may have
        forgotten (a client runtime killed before its snapshot held them)."""
        held = self._clients.get(client_id)
        if not held:
            return []
        skip = set(named)
        sessions = self._sessions
        return sorted(h for h in held if h not in skip and sessions[h][0].since < before)

    def processes(self) -> list[ProcessId]:
        """Local processes holding handles: the shell checks these are still alive."""
        return list(self._processes)

    def clients(self) -> dict[str, float]:
        """Network clients holding handles, with the time each was last heard from."""
        return dict(self._last_seen)

    @property
    def next_handle(self) -> int:
        return self._next_handle

    def reserve_handles(self, first: int, ceiling: int, reserve: Callable[[int], int]) -> None:
        """Give handles from at least `first` on (never lower than now), below `ceiling`;
        at the ceiling, `reserve(next handle)` must record a higher mark (durably, so a
        restart after a crash starts above every handle given) and return it."""
        self._next_handle = max(self._next_handle, first)
        self._ceiling = ceiling
        self._reserve = reserve

    # -- persistence ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every session and the next handle, as plain msgpack/JSON-ready data."""
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "next_handle": self._next_handle,
            "sessions": [_session_to_list(rec[0]) for rec in self._sessions.values()],
        }

    @classmethod
    def restore(cls, data: Mapping[str, Any], now: float) -> SeatTable:
        """Rebuild a table from `snapshot()` after a restart. Network clients get a
        full timeout from `now` to be heard from; the shell reaps dead processes."""
        try:
            if data.get("format") != SNAPSHOT_FORMAT or data.get("version") != SNAPSHOT_VERSION:
                raise ValueError("not a version 1 seat snapshot")
            table = cls(first_handle=_int(data["next_handle"]))
            stations: dict[Station, Station] = {}
            for raw in data["sessions"]:
                sess = _session_from_list(raw, stations)
                if sess.handle >= table._next_handle or sess.handle in table._sessions:
                    raise ValueError(f"handle {sess.handle} is repeated or not below the next handle")
                item = table._items.get(sess.key)
                use = item.stations.get(sess.station) if item is not None else None
                if use is not None and sess.mode is not _NONE and (
                    use.exclusive or (sess.mode is _EXCLUSIVE and (use.per_access or use.per_station))
                ):
                    raise ValueError(f"handle {sess.handle} breaks exclusivity on station {sess.station}")
                table._attach(sess, item, use)
                if sess.holder.client_id is not None:
                    table._last_seen[sess.holder.client_id] = now
        except LicentiaError as exc:
            raise LicentiaError(ErrorCode.WRONG_CONTENT, f"the seat snapshot is damaged: {exc.message}") from None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise LicentiaError(ErrorCode.WRONG_CONTENT, f"the seat snapshot is damaged: {exc}") from None
        return table

    # -- internals ---------------------------------------------------------

    def _attach(self, sess: Session, item: _ItemUse | None, use: _StationUse | None) -> int:
        """Record `sess`; `item` and `use` are its key's and station's counters, if any."""
        if item is None:
            item = self._items[sess.key] = _ItemUse(sess.key)
        if use is None:
            use = item.stations[sess.station] = _StationUse(item, sess.station)
        self._sessions[sess.handle] = (sess, use)
        mode = sess.mode
        if mode is _PER_ACCESS:
            use.per_access += 1
            item.seats += 1
        elif mode is _PER_STATION:
            if use.per_station == 0:
                item.seats += 1
            use.per_station += 1
        elif mode is _EXCLUSIVE:
            use.exclusive += 1
            item.seats += 1
        else:
            use.none += 1
        holder = sess.holder
        if holder.process is not None:
            handles = self._processes.get(holder.process)
            if handles is None:
                self._processes[holder.process] = {sess.handle}
            else:
                handles.add(sess.handle)
        if holder.client_id is not None:
            handles = self._clients.get(holder.client_id)
            if handles is None:
                self._clients[holder.client_id] = {sess.handle}
            else:
                handles.add(sess.handle)
        return item.seats

    def _release(self, rec: tuple[Session, _StationUse], reason: ReleaseReason, now: float) -> Release:
        sess, use = rec
        del self._sessions[sess.handle]
        item = use.item
        mode = sess.mode
        freed = True
        if mode is _PER_ACCESS:
            use.per_access -= 1
        elif mode is _PER_STATION:
            use.per_station -= 1
            freed = use.per_station == 0
        elif mode is _EXCLUSIVE:
            use.exclusive -= 1
        else:
            use.none -= 1
            freed = False
        if freed:
            item.seats -= 1
        if not (use.per_access or use.per_station or use.exclusive or use.none):
            del item.stations[use.station]
            if not item.stations:
                del self._items[item.key]
        holder = sess.holder
        if holder.process is not None:
            handles = self._processes[holder.process]
            handles.discard(sess.handle)
            if not handles:
                del self._processes[holder.process]
        if holder.client_id is not None:
            handles = self._clients[holder.client_id]
            handles.discard(sess.handle)
            if not handles:
                del self._clients[holder.client_id]
                del self._last_seen[holder.client_id]
        return _make(Release, (sess, reason, freed, item.seats, now))  # type: ignore[no-any-return]


_PROGRAM: Final = ReleaseReason.PROGRAM


def _refuse(
    code: ErrorCode,
    message: str,
    key: ItemKey,
    mode: AccessMode,
    station: Station,
    holder: Holder,
    used: int,
    now: float,
) -> SeatRefused:
    event = Event(EventKind.DENY, now, key, mode, station, holder, None, used, None, code)
    return SeatRefused(code, message, event)


def _exclusive_conflict(
    key: ItemKey, mode: AccessMode, station: Station, holder: Holder, used: int, now: float, held_exclusively: bool,
    per_station: int = 0, per_access: int = 0,
) -> SeatRefused:
    """213, saying which kind of holder is in the way: an exclusive one, or (for an
    exclusive request) per-station or per-access uses on the same station."""
    if held_exclusively:
        message = f"{key} is already used exclusively on station {station}"
        hint = "a program on this station holds the license exclusively; wait until it releases it"
    else:
        kinds = [text for n, text in ((per_station, f"{per_station} per-station"),
                                      (per_access, f"{per_access} per-access")) if n]
        held = " and ".join(kinds) or "other"
        message = f"{key} is already used on station {station} ({held} use(s)); exclusive access needs it alone"
        hint = (f"exclusive access needs the license unused on this station, where {held} use(s) hold it; "
                "wait until they are released, or ask for per-station access")
    event = Event(EventKind.DENY, now, key, mode, station, holder, None, used, None, ErrorCode.EXCLUSIVE_CONFLICT)
    return SeatRefused(ErrorCode.EXCLUSIVE_CONFLICT, message, event, hint)


# --------------------------------------------------------------------------- snapshot encoding


def _station_to_list(st: Station) -> list[str]:
    return [st.host_id, st.vm_id, st.session_id]


def _session_to_list(s: Session) -> list[Any]:
    h = s.holder
    proc = None
    if h.process is not None:
        proc = [_station_to_list(h.process.station), h.process.pid, h.process.start_time]
    return [
        s.handle,
        [s.key.container, s.key.firm_code, s.key.product_code, s.key.item_id],
        s.mode.value,
        _station_to_list(s.station),
        [proc, h.client_id, h.program, h.user, h.host],
        s.since,
    ]


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _station(raw: Any, seen: dict[Station, Station]) -> Station:
    host, vm, session = raw
    st = Station(_str(host), _str(vm), _str(session))
    return seen.setdefault(st, st)


def _session_from_list(raw: Any, stations: dict[Station, Station]) -> Session:
    handle, key, mode, station, holder, since = raw
    container, firm, product, item_id = key
    proc_raw, client_id, program, user, host = holder
    proc = None
    if proc_raw is not None:
        pst, pid, start = proc_raw
        proc = ProcessId(_station(pst, stations), _int(pid), _num(start))
    return Session(
        _int(handle),
        ItemKey(_str(container), _int(firm), _int(product), _int(item_id)),
        AccessMode(mode),
        _station(station, stations),
        Holder(proc, None if client_id is None else _str(client_id), _str(program), _str(user), _str(host)),
        _num(since),
    )
