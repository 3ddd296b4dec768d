"""The runtime as its collaborators see it: what the token and cloud containers and the
central sync (`tokens`, `cloud`, `sync`) use of it, and nothing more.

`licentia.runtime.server.Runtime` has all of this; the collaborators name this protocol
instead of that class, so none of them imports the runtime back (import-linter keeps
`licentia.runtime` free of cycles).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

from licentia.core.seats import Event, SeatTable, Session
from licentia.model import AccessMode, Environment, Fingerprint
from licentia.runtime.config import RuntimeConfig
from licentia.runtime.home import RuntimeHome
from licentia.runtime.licenses import Changes, Loaded, LocalContainers
from licentia.runtime.usagelog import UsageLog

Message = dict[str, Any]


class HeldTokens(Protocol):
    """The token containers this runtime holds now, by serial."""

    @property
    def held(self) -> Mapping[str, Any]: ...


class Runtime(Protocol):
    """What a collaborator of the runtime reads and calls (see the module's docstring)."""

    recent_seq: int  # the sequence number of the last event remembered

    @property
    def home(self) -> RuntimeHome: ...

    @property
    def config(self) -> RuntimeConfig: ...

    @property
    def fingerprint(self) -> Fingerprint: ...

    @property
    def environment(self) -> Environment: ...

    @property
    def host_name(self) -> str: ...

    @property
    def seats(self) -> SeatTable: ...

    @property
    def containers(self) -> LocalContainers: ...

    @property
    def log(self) -> UsageLog | None: ...

    @property
    def recent(self) -> collections.deque[tuple[int, Event | dict[str, Any]]]: ...

    @property
    def handle_events(self) -> dict[int, set[str]]: ...

    @property
    def net_pids(self) -> dict[int, int]: ...

    @property
    def tokens(self) -> HeldTokens: ...

    def _note_problem(self, text: str) -> None: ...

    def _spawn(self, coro: Awaitable[Any]) -> None: ...

    def _seats_changed(self) -> None: ...

    def _forget_later(self, handle: int, why: str) -> None: ...

    def _log_events(self, events: tuple[Event, ...]) -> None: ...

    def _log_decrement(self, sess: Session, units: int, remaining: int | None) -> None: ...

    def _container_changes(self, changes: Changes) -> None: ...

    def _grant_reply(self, msg: Message, ld: Loaded, entry: Any, handle: int, mode: AccessMode,
                     local: bool) -> Message: ...

    def _gone_reply(self, rid: int, handle: int) -> Message: ...
