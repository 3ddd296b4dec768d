"""Group commit of etcd transactions: the independent transactions that tasks of one event
loop send to one etcd member in the same turn of the loop travel as one etcd transaction.

The outer transaction compares nothing and holds each caller's transaction as a nested one
(etcd 3.3 and later), so each still succeeds or fails on its own compares: a caller sees the
answer it would have had alone. One round trip and one raft entry then carry many seats,
which is what lets one front end keep pace with many clients.

etcd refuses a transaction that writes one key twice, in any of its nested branches; a
transaction writing a key another of the batch writes waits for the next batch. When the
outer transaction fails (a member down, a timeout), every caller in it gets that error, as
it would have alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aetcd
from aetcd import transactions

__all__ = ["MAX_BATCH", "TxnBatch"]

MAX_BATCH = 64  # transactions in one (etcd refuses more than --max-txn-ops, 128 by default)

_Pending = tuple[Any, "asyncio.Future[tuple[bool, list[Any]]]", frozenset[bytes]]


class TxnBatch:
    """The transactions bound for one member (`client`), sent together at the loop's next turn."""

    def __init__(self, client: aetcd.Client) -> None:
        self._client = client
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()  # referenced until done

    def transaction(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any]
    ) -> asyncio.Future[tuple[bool, list[Any]]]:
        """`aetcd.Client.transaction(compare, success, failure)`, sent with the others of this
        turn: (succeeded, responses), ranges as lists of (value, key-value)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[bool, list[Any]]] = loop.create_future()
        written = frozenset(
            op.key for op in (*success, *failure) if isinstance(op, (transactions.Put, transactions.Delete))
        )
        self._pending.append(((compare, success, failure), done, written))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return done

    def _flush(self) -> None:
        self._scheduled = False
        batch: list[_Pending] = []
        later: list[_Pending] = []
        written: set[bytes] = set()
        for pending in self._pending:
            if pending[1].done():  # its caller gave up (cancelled)
                continue
            if len(batch) < MAX_BATCH and not (pending[2] & written):
                batch.append(pending)
                written |= pending[2]
            else:
                later.append(pending)
        self._pending = later
        if later:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                (compare, success, failure), _done, _keys = batch[0]
                answers = [await self._client.transaction(compare=compare, success=success, failure=failure)]
            else:
                nested = [transactions.Txn(c, s, f) for (c, s, f), _done, _keys in batch]
                _ok, responses = await self._client.transaction(compare=[], success=nested, failure=[])
                answers = [_answer(r.response_txn) for r in responses]
        except BaseException as exc:  # every caller gets what it would have had alone
            for _txn, done, _keys in batch:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_txn, done, _keys), answer in zip(batch, answers, strict=True):
            if not done.done():
                done.set_result(answer)


def _answer(txn: Any) -> tuple[bool, list[Any]]:
    """A nested transaction's answer in the shape `aetcd.Client.transaction` gives."""
    out: list[Any] = []
    for r in txn.responses:
        if r.WhichOneof("response") == "response_range":
            out.append([(kv.value, kv) for kv in r.response_range.kvs])
        else:
            out.append(r)
    return bool(txn.succeeded), out
