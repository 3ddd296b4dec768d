"""Durable container changes with group commit.

Every change that must be on disk before the answer leaves (a unit decrement, the
start of a usage period, a step of the virtual clock) is an operation
`op(content) -> (content, result)` submitted to the container's `ContainerWriter`.
The writer runs one container transaction at a time in a worker thread; operations
submitted while one is running wait and then go together into the next transaction:
one read, one atomic write (temp file, fsync, rename, fsync of the directory) for the
whole batch. Each operation still succeeds or fails on its own (a refused decrement
does not undo the others).

Clients in a closed loop (each sends its next decrement when the last one is answered)
would split into a small batch that starts as soon as the first of them is back and a
large one after it. So before a batch the writer waits, at most `max_wait` (1 ms), until
as many operations wait as the last batch held; a batch that waited in vain sets the
number lower. A writer that serves one operation at a time never waits.

With `group=False` each operation is its own transaction (one fsync per decrement):
the benchmark's comparison point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from licentia.core.content import ContainerContent
from licentia.model import ErrorCode, LicentiaError

T = TypeVar("T")
Op = Callable[[ContainerContent], tuple[ContainerContent, Any]]
Then = Callable[[Any], Any]


class Batchable(Protocol):
    """An operation whose consecutive peers with an equal `batch_key` can run together:
    `run(content, ops)` returns the content after all of them and each one's (ok, result or
    error), as applying them one by one would."""

    batch_key: Any

    def run(self, content: ContainerContent, ops: list[Any]) -> tuple[ContainerContent, list[tuple[bool, Any]]]: ...


class Transactional(Protocol):
    def transact(self, change: Callable[[ContainerContent], tuple[ContainerContent, T]]) -> T: ...


class ContainerWriter:
    """Serialises and batches durable changes of one container."""

    def __init__(
        self,
        container: Transactional,
        *,
        group: bool = True,
        max_batch: int = 4096,
        max_wait: float = 0.001,
        on_content: Callable[[ContainerContent], None] | None = None,
    ) -> None:
        self.container = container
        self.group = group
        self.max_batch = max_batch if group else 1
        self.max_wait = max_wait if group else 0.0
        self.on_content = on_content
        self._queue: list[tuple[Op, asyncio.Future[Any], Then | None]] = []
        self._target = 1  # operations a batch waits for (see the module's docstring)
        self._filled: asyncio.Future[None] | None = None
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="licentia-commit")
        self.transactions = 0
        self.operations = 0

    def submit(self, op: Op, then: Then | None = None) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves once it is on disk (or with its refusal). With
        `then`, it resolves to `then(result)`, called on the loop once the batch is written
        (the caller needs no task of its own to finish the request)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, fut, then))
        filled = self._filled
        if filled is not None and len(self._queue) >= self._target and not filled.done():
            filled.set_result(None)
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                waited_in_vain = False
                if self.max_wait > 0 and len(self._queue) < self._target:
                    filled = self._filled = loop.create_future()
                    timer = loop.call_later(self.max_wait, _settle, filled)
                    try:
                        await filled
                    finally:
                        timer.cancel()
                        self._filled = None
                    waited_in_vain = len(self._queue) < self._target
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self._target = len(batch) if waited_in_vain else max(self._target, len(batch))
                ops = [op for op, _, _ in batch]
                try:
                    results, content = await loop.run_in_executor(self._executor, self._apply, ops)
                except LicentiaError as exc:
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(LicentiaError(exc.code, exc.message, exc.hint))
                    continue
                except Exception as exc:  # an I/O error: nothing of this batch was written
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(
                                LicentiaError(ErrorCode.INTERNAL, f"the container could not be written: {exc}")
                            )
                    continue
                self.transactions += 1
                self.operations += len(batch)
                if self.on_content is not None:
                    self.on_content(content)
                for (ok, value), (_, fut, then) in zip(results, batch, strict=True):
                    if fut.done():
                        continue
                    if not ok:
                        fut.set_exception(value)
                        continue
                    if then is not None:
                        try:
                            value = then(value)
                        except Exception as exc:  # the reply could not be made: that request fails alone
                            fut.set_exception(exc)
                            continue
                    fut.set_result(value)
        finally:
            self._running = False

    def _apply(self, ops: list[Op]) -> tuple[list[tuple[bool, Any]], ContainerContent]:
        results: list[tuple[bool, Any]] = []

        def change(content: ContainerContent) -> tuple[ContainerContent, ContainerContent]:
            i, n = 0, len(ops)
            while i < n:
                op = ops[i]
                key = getattr(op, "batch_key", None)
                if key is not None:  # a run of operations that apply together (see Batchable)
                    j = i + 1
                    while j < n and getattr(ops[j], "batch_key", None) == key:
                        j += 1
                    if j - i > 1:
                        content, out = cast(Batchable, op).run(content, ops[i:j])
                        results.extend(out)
                        i = j
                        continue
                try:
                    content, value = op(content)
                except LicentiaError as exc:
                    results.append((False, exc))
                else:
                    results.append((True, value))
                i += 1
            return content, content

        content = self.container.transact(change)
        return results, content

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
