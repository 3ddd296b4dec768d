"""The runtime's own containers: opened once, judged in memory, written through the writer.

Evaluating an access needs no disk: the container content is cached and the core judges
the item against it. Only a change that matters (the first use that starts a usage period,
a step of the virtual clock, a unit decrement) goes to disk, through the container's
`ContainerWriter`, before the answer leaves. A periodic scan notices containers added,
removed or changed by someone else (`licentia update apply`) and reports which items
changed, so programs holding them learn it through their events.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from licentia.containers.soft import SUFFIX, SoftContainer, list_paths
from licentia.core.clock import VirtualClock
from licentia.core.content import ContainerContent, ItemEntry
from licentia.core.evaluate import begin_use, decrement, evaluate
from licentia.core.seats import ItemKey
from licentia.crypto import signing_public_key
from licentia.model import (
    ContainerStatus,
    ErrorCode,
    Fingerprint,
    ItemRequest,
    LicentiaError,
    Verdict,
)
from licentia.runtime.commit import ContainerWriter

Stamp = tuple[int, int, int]


def stamp_of(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Loaded:
    """One opened container and its cached content."""

    serial: str
    path: Path
    container: SoftContainer
    content: ContainerContent
    stamp: Stamp | None
    writer: ContainerWriter
    public_key: bytes
    status: ContainerStatus = ContainerStatus.OK


class Candidate(NamedTuple):
    loaded: Loaded
    entry: ItemEntry
    key: ItemKey


@dataclass
class Problem:
    path: Path
    error: LicentiaError


@dataclass
class ScanResult:
    opened: list[tuple[Path, Stamp | None, SoftContainer, ContainerContent]] = field(default_factory=list)
    reread: list[tuple[str, Stamp | None, ContainerContent]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed_items: set[tuple[str, int, int]] = field(default_factory=set)  # (serial, firm, item_id)


class LocalContainers:
    def __init__(self, directory: Path, fingerprint: Fingerprint, *, group_commit: bool = True) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.group_commit = group_commit
        self.loaded: dict[str, Loaded] = {}
        self.problems: dict[str, Problem] = {}
        self._candidates: dict[tuple[int, int, str | None], list[Candidate]] = {}
        self._verdicts: dict[tuple[ItemKey, int],
                             tuple[int, ItemEntry, VirtualClock, Verdict, bool, ItemRequest]] = {}
        self.generation = 0  # counts changes of what is served: what is cached per generation stays true within it

    # -- scanning (the disk part runs in a worker thread, the rest on the loop) --

    def scan_disk(self, now: int) -> ScanResult:
        """Read what changed on disk since the last scan. Touches no shared state."""
        result = ScanResult()
        known = {ld.path: ld for ld in self.loaded.values()}
        present = set()
        for path in list_paths(self.directory):
            present.add(path)
            stamp = stamp_of(path)
            ld = known.get(path)
            if ld is not None:
                if stamp != ld.stamp:
                    try:
                        result.reread.append((ld.serial, stamp, ld.container.read()))
                    except LicentiaError as exc:
                        result.problems.append(Problem(path, exc))
                        result.gone.append(ld.serial)
                continue
            prior = self.problems.get(str(path))
            if prior is not None and getattr(prior, "stamp", None) == stamp:
                continue
            try:
                container = SoftContainer.open(path, self.fingerprint, now)
                result.opened.append((path, stamp, container, container.read()))
            except LicentiaError as exc:
                problem = Problem(path, exc)
                problem.stamp = stamp  # type: ignore[attr-defined]
                result.problems.append(problem)
        for path, ld in known.items():
            if path not in present:
                result.gone.append(ld.serial)
        return result

    def apply_scan(self, result: ScanResult) -> Changes:
        changes = Changes()
        if result.gone or result.opened or result.reread:
            self._changed()
        for serial in result.gone:
            ld = self.loaded.pop(serial, None)
            if ld is not None:
                changes.removed.append(serial)
                ld.writer.close()
        for problem in result.problems:
            self.problems[str(problem.path)] = problem
        for path, stamp, container, content in result.opened:
            serial = str(container.serial)
            self.problems.pop(str(path), None)
            ld = Loaded(serial, path, container, content, stamp, self._writer(container, serial),
                        signing_public_key(content.sign_key), container.status(content))
            self.loaded[serial] = ld
            changes.added.append(serial)
        for serial, stamp, content in result.reread:
            ld = self.loaded.get(serial)
            if ld is None:
                continue
            changes.changed_items |= _changed_items(serial, ld.content, content)
            ld.content = content
            ld.stamp = stamp
            ld.status = ld.container.status(content)
        return changes

    def _writer(self, container: SoftContainer, serial: str) -> ContainerWriter:
        def on_content(content: ContainerContent) -> None:
            ld = self.loaded.get(serial)
            if ld is not None and ld.container is container:
                ld.content = content
                ld.stamp = stamp_of(ld.path)
                self._changed()

        return ContainerWriter(container, group=self.group_commit, on_content=on_content)

    def close(self) -> None:
        for ld in self.loaded.values():
            ld.writer.close()

    # -- finding items --

    def candidates(self, firm: int, product: int, container: str | None = None) -> list[Candidate]:
        """The items of firm/product (in one container, or all), in container and item order.

        Cached until any container's content changes: the license path asks this on every access."""
        cache_key = (firm, product, container)
        found = self._candidates.get(cache_key)
        if found is not None:
            return found
        out: list[Candidate] = []
        for serial, ld in self.loaded.items():
            if container is not None and serial != container:
                continue
            firm_entry = ld.content.firms.get(firm)
            if firm_entry is None:
                continue
            for item_id in sorted(firm_entry.items):
                entry = firm_entry.items[item_id]
                if entry.item.product_code == product:
                    out.append(Candidate(ld, entry, ItemKey(serial, firm, product, item_id)))
        if len(self._candidates) > 10_000:
            self._candidates.clear()
        self._candidates[cache_key] = out
        return out

    def judge(self, cand: Candidate, request: ItemRequest, now: int) -> tuple[Verdict, bool]:
        """The core's verdict on `cand` for `request` at `now`, and whether granting it must
        first write the container (a usage period starts, the clock steps). Within one second
        and one content the answer does not change, so it is kept that long."""
        ld, entry = cand.loaded, cand.entry
        clock = ld.content.clock
        memo_key = (cand.key, id(request))
        memo = self._verdicts.get(memo_key)
        if memo is not None and memo[0] == now and memo[1] is entry and memo[2] is clock and memo[5] is request:
            return memo[3], memo[4]
        verdict = evaluate(entry.item, entry.state, request, clock, now)
        write = clock.observe(now) != clock or begin_use(entry.item, entry.state, now) != entry.state
        if len(self._verdicts) > 10_000:
            self._verdicts.clear()
        self._verdicts[memo_key] = (now, entry, clock, verdict, write, request)
        return verdict, write

    def _changed(self) -> None:
        self.generation += 1
        self._candidates.clear()
        self._verdicts.clear()

    def entry(self, serial: str, firm: int, item_id: int) -> tuple[Loaded, ItemEntry]:
        ld = self.loaded.get(serial)
        if ld is None:
            raise LicentiaError(ErrorCode.CONTAINER_NOT_FOUND, f"container {serial} is no longer here")
        firm_entry = ld.content.firms.get(firm)
        entry = firm_entry.items.get(item_id) if firm_entry is not None else None
        if entry is None:
            raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"item {item_id} of firm {firm} is no longer in container {serial}")
        return ld, entry


# -- durable operations (run inside the container transaction, in the writer's thread) --


def first_use_op(firm: int, item_id: int, request: ItemRequest, now: int) -> Callable[[ContainerContent], tuple[ContainerContent, ItemEntry]]:
    """Observe the clock, judge the item again, and record its first use."""

    def op(content: ContainerContent) -> tuple[ContainerContent, ItemEntry]:
        content = content.with_clock(content.clock.observe(now))
        entry = _item(content, firm, item_id)
        verdict = evaluate(entry.item, entry.state, request, content.clock, now)
        verdict.raise_if_refused()
        state = begin_use(entry.item, entry.state, now)
        if state != entry.state:
            content = content.with_item_state(firm, item_id, state)
            entry = content.firms[firm].items[item_id]
        return content, entry

    return op


_ANY_USE = ItemRequest()


class DecrementOp:
    """Spend `units` of an item's unit counter: observe the clock, judge the item, decrement.

    Called alone it is an operation like any other. Several decrements of one item in a
    batch run together (`run`, through their `batch_key`): the same checks in the same order
    with the same results, and one new content for all of them instead of one each."""

    __slots__ = ("firm", "item_id", "now", "units")

    def __init__(self, firm: int, item_id: int, units: int, now: int) -> None:
        self.firm = firm
        self.item_id = item_id
        self.units = units
        self.now = now

    @property
    def batch_key(self) -> tuple[str, int, int]:
        return ("decrement", self.firm, self.item_id)

    def __call__(self, content: ContainerContent) -> tuple[ContainerContent, int]:
        content, [(ok, value)] = DecrementOp.run(content, [self])
        if not ok:
            raise value
        result: int = value
        return content, result

    @staticmethod
    def run(content: ContainerContent, ops: list[DecrementOp]) -> tuple[ContainerContent, list[tuple[bool, Any]]]:
        """Apply `ops` (all on one item) in order, each as it would alone on what the ones
        before it left: a refused one changes nothing, not even the clock."""
        firm, item_id = ops[0].firm, ops[0].item_id
        try:
            entry = _item(content, firm, item_id)
        except LicentiaError as exc:
            return content, [(False, LicentiaError(exc.code, exc.message, exc.hint)) for _ in ops]
        item = entry.item
        clock = content.clock
        state = entry.state
        results: list[tuple[bool, Any]] = []
        for op in ops:
            seen = clock.observe(op.now)
            verdict = evaluate(item, state, _ANY_USE, seen, op.now)
            try:
                verdict.raise_if_refused()
                after = decrement(item, state, op.units)
            except LicentiaError as exc:
                results.append((False, exc))
                continue
            clock, state = seen, after
            results.append((True, after.units_remaining if after.units_remaining is not None else 0))
        content = content.with_clock(clock)
        if state is not entry.state:
            content = content.with_item_state(firm, item_id, state)
        return content, results


def decrement_op(firm: int, item_id: int, units: int, now: int) -> DecrementOp:
    return DecrementOp(firm, item_id, units, now)


def _item(content: ContainerContent, firm: int, item_id: int) -> ItemEntry:
    firm_entry = content.firms.get(firm)
    entry = firm_entry.items.get(item_id) if firm_entry is not None else None
    if entry is None:
        raise LicentiaError(ErrorCode.ENTRY_NOT_FOUND, f"item {item_id} of firm {firm} is not in container {content.serial}")
    return entry


def _changed_items(serial: str, old: ContainerContent, new: ContainerContent) -> set[tuple[str, int, int]]:
    changed: set[tuple[str, int, int]] = set()
    for firm_code in set(old.firms) | set(new.firms):
        a = old.firms.get(firm_code)
        b = new.firms.get(firm_code)
        a_items = a.items if a else {}
        b_items = b.items if b else {}
        for item_id in set(a_items) | set(b_items):
            x, y = a_items.get(item_id), b_items.get(item_id)
            if x is None or y is None or x.license != y.license or x.state != y.state:
                changed.add((serial, firm_code, item_id))
    return changed


__all__ = [
    "SUFFIX",
    "Changes",
    "DecrementOp",
    "Loaded",
    "LocalContainers",
    "decrement_op",
    "first_use_op",
    "stamp_of",
]
