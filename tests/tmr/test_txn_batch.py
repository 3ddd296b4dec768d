"""Group commit of etcd transactions (`licentia.tmr.batch`) on a real 3-member cluster: each
transaction of a batch is answered as if it had been sent alone."""

from __future__ import annotations

import asyncio
import secrets

import aetcd
from tests.tmr.etcd import EtcdCluster

from licentia.tmr.batch import MAX_BATCH, TxnBatch


def _client(cluster: EtcdCluster) -> aetcd.Client:
    host, port = cluster.endpoints[0].rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=5)


def test_transactions_of_one_turn_are_answered_each_on_its_own_compares(etcd_cluster: EtcdCluster) -> None:
    """Twenty transactions sent in one turn: those whose key is free take it, those whose key
    was taken see it in their failure branch; a failing one changes nothing for the others."""

    async def main() -> None:
        p = f"/test/batch/{secrets.token_hex(4)}/".encode()
        async with _client(etcd_cluster) as c:
            t = c.transactions
            for i in range(0, 20, 2):  # every even key is taken already
                await c.put(p + b"%d" % i, b"before")
            batch = TxnBatch(c)
            answers = await asyncio.gather(*(
                batch.transaction([t.create(p + b"%d" % i) == 0], [t.put(p + b"%d" % i, b"mine %d" % i)],
                                  [t.get(p + b"%d" % i)])
                for i in range(20)
            ))
            for i, (ok, resp) in enumerate(answers):
                assert ok is (i % 2 == 1)
                if not ok:
                    assert resp[0][0][0] == b"before"
                got = await c.get(p + b"%d" % i)
                assert got is not None and got.value == (b"before" if i % 2 == 0 else b"mine %d" % i)

    asyncio.run(main())


def test_two_transactions_writing_one_key_go_one_after_the_other(etcd_cluster: EtcdCluster) -> None:
    """etcd refuses a transaction that writes a key twice (in any nested branch): two callers
    racing for one key in one turn must not fail each other; exactly one wins, the other sees
    the winner's value, as if sent one after the other."""

    async def main() -> None:
        p = f"/test/batch/{secrets.token_hex(4)}/".encode()
        async with _client(etcd_cluster) as c:
            t = c.transactions
            batch = TxnBatch(c)
            key = p + b"slot"
            answers = await asyncio.gather(*(
                batch.transaction([t.create(key) == 0], [t.put(key, b"%d" % i)], [t.get(key)]) for i in range(5)
            ))
            winners = [i for i, (ok, _resp) in enumerate(answers) if ok]
            assert len(winners) == 1
            value = b"%d" % winners[0]
            for ok, resp in answers:
                assert ok or resp[0][0][0] == value
            got = await c.get(key)
            assert got is not None and got.value == value

    asyncio.run(main())


def test_more_transactions_than_a_batch_holds_are_all_answered(etcd_cluster: EtcdCluster) -> None:
    async def main() -> None:
        p = f"/test/batch/{secrets.token_hex(4)}/".encode()
        n = 3 * MAX_BATCH + 5
        async with _client(etcd_cluster) as c:
            t = c.transactions
            batch = TxnBatch(c)
            answers = await asyncio.gather(*(
                batch.transaction([t.create(p + b"%d" % i) == 0], [t.put(p + b"%d" % i, b"x")], []) for i in range(n)
            ))
            assert all(ok for ok, _resp in answers)
            assert len(list(await c.get_prefix(p, keys_only=True))) == n

    asyncio.run(main())
