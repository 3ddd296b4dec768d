"""Durable container changes with group commit.

Every change that must be on disk before the answer leaves (a unit decrement, the
start of a usage period, a step of the virtual clock) is an operation
`op(content) -> (content, result)` submitted to the container's `ContainerWriter`.
The writer runs one container transaction at a time in a worker thread; operations
submitted while one is running wait and then go together into the next transaction:
one read, one atomic write (temp file, fsync, rename, fsync of the directory) for the
whole batch. Each operation still succeeds or fails on its own (a refused decrement
does not undo the others).

With `group=False` each operation is its own transaction (one fsync per decrement):
the benchmark's comparison point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from licentia.core.content import ContainerContent
from licentia.model import ErrorCode, LicentiaError

T = TypeVar("T")
Op = Callable[[ContainerContent], tuple[ContainerContent, Any]]


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
        on_content: Callable[[ContainerContent], None] | None = None,
    ) -> None:
        self.container = container
        self.group = group
        self.max_batch = max_batch if group else 1
        self.on_content = on_content
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="licentia-commit")
        self.transactions = 0
        self.operations = 0

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves once it is on disk (or with its refusal)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, fut))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                ops = [op for op, _ in batch]
                try:
                    results, content = await loop.run_in_executor(self._executor, self._apply, ops)
                except LicentiaError as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(LicentiaError(exc.code, exc.message, exc.hint))
                    continue
                except Exception as exc:  # an I/O error: nothing of this batch was written
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(
                                LicentiaError(ErrorCode.INTERNAL, f"the container could not be written: {exc}")
                            )
                    continue
                self.transactions += 1
                self.operations += len(batch)
                if self.on_content is not None:
                    self.on_content(content)
                for (ok, value), (_, fut) in zip(results, batch, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self._running = False

    def _apply(self, ops: list[Op]) -> tuple[list[tuple[bool, Any]], ContainerContent]:
        results: list[tuple[bool, Any]] = []

        def change(content: ContainerContent) -> tuple[ContainerContent, ContainerContent]:
            for op in ops:
                try:
                    content, value = op(content)
                except LicentiaError as exc:
                    results.append((False, exc))
                else:
                    results.append((True, value))
            return content, content

        content = self.container.transact(change)
        return results, content

    def close(self) -> None:
        self._executor.shutdown(wait=True)
