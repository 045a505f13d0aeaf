"""Fencing at the storage port, on SQLite and MariaDB: once a new owner has taken a shard over
with a newer epoch, every commit of the former owner fails inside the database (``Fenced``),
whichever path it takes (small batches as text, large ones as XA branches, checkpoints), and
nothing of it is written; a branch the former owner left prepared is rolled back."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy
import pytest
from test_storage_contract import BIG_BATCH, big_batch, our_prepared_branches, stored_seqs

from balance.domain import commands as c
from balance.engine.shard import FENCED, ShardEngine
from balance.storage import schema
from balance.storage.base import BatchWrite, Fenced, ShardStorage, StorageError
from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.mariadb_driver import fence_guard


async def owner(backend: Any, epoch: int) -> ShardStorage:
    storage = backend.make(0)
    storage.fence_with(epoch)
    await storage.open()
    return storage


async def commit_until_fenced(storage: ShardStorage, batch: BatchWrite) -> None:
    """The former owner's commit: refused. On MariaDB the takeover killed its connections, so
    the first try may fail as a lost connection; the one after it reconnects and is fenced."""
    for _ in range(3):
        try:
            await storage.commit(batch)
        except Fenced:
            return
        except StorageError:
            continue
        raise AssertionError("a fenced owner committed")
    raise AssertionError("never fenced")


@pytest.mark.parametrize("rows", [BIG_BATCH, 3])
async def test_a_former_owner_cannot_commit_after_a_takeover(backend: Any, rows: int) -> None:
    old = await owner(backend, 1)
    await old.commit(big_batch(1, 1, rows=rows))
    new = await owner(backend, 2)  # recovers after this: it sees what the old owner committed
    await commit_until_fenced(old, big_batch(1 + rows, 2, rows=rows))
    await commit_until_fenced(old, BatchWrite(checkpoint_seq=5))  # a checkpoint too
    assert await stored_seqs(new) == list(range(1, 1 + rows))
    assert await new.checkpoint_seq() != 5
    await new.commit(big_batch(1 + rows, 3, rows=rows))
    assert await stored_seqs(new) == list(range(1, 1 + 2 * rows))
    assert await our_prepared_branches(new) == []


async def test_an_older_epoch_cannot_take_the_shard_back(backend: Any) -> None:
    await owner(backend, 5)
    stale = backend.make(0)
    stale.fence_with(4)
    with pytest.raises(Fenced):
        await stale.open()
    await stale.close()
    again = await owner(backend, 5)  # the same epoch (a restart of the same owner) is fine
    await again.commit(big_batch(1, 1, rows=3))


async def test_a_storage_without_an_epoch_checks_nothing(backend: Any) -> None:
    """The single-process default: no fence row, no guard."""
    plain = backend.make(0)
    await plain.open()
    await plain.commit(big_batch(1, 1, rows=3))
    assert await stored_seqs(plain) == [1, 2, 3]


async def test_a_branch_the_former_owner_left_prepared_is_rolled_back_at_takeover(mariadb_backend: Any) -> None:
    """XA branches are MariaDB's."""
    backend = mariadb_backend
    old = await owner(backend, 1)
    assert isinstance(old, MariaDbShardStorage)
    # A branch prepared under the guard (it holds the fence row's shared lock), whose process
    # then vanished: the takeover's fence write would wait for it forever.
    conn = await asyncmy.connect(**old._connect_kwargs(autocommit=True))
    xid = f"{old._xid_prefix}999"
    async with conn.cursor() as cur:
        await cur.execute(f"XA START '{xid}';{fence_guard(1)}")
        while await cur.nextset():
            pass
        row = big_batch(7, 1, rows=1).journal[0]
        columns = ",".join(schema.JOURNAL_COLUMNS)
        await cur.execute(f"INSERT INTO journal ({columns}) VALUES ({','.join(['%s'] * len(row))})", row)
        await cur.execute(f"XA END '{xid}'")
        await cur.execute(f"XA PREPARE '{xid}'")
    conn.close()
    new = await asyncio.wait_for(owner(backend, 2), 30)
    assert await our_prepared_branches(new) == []
    assert await stored_seqs(new) == []


async def test_a_fenced_engine_answers_unavailable_and_writes_nothing_more(backend: Any) -> None:
    """The engine of the former owner: its commit is refused, the commands are answered 503
    (never acknowledged), and it takes nothing more; the new owner serves the shard."""
    old_storage = backend.make(0)
    old_storage.fence_with(1)
    old = ShardEngine(0, old_storage)
    await old.start()
    create = c.CreateAccount("US-0-a", None, "partner", "US", "USD", "a", 0, b"{}")
    assert (await old.execute(create)).status == 201
    await (await owner(backend, 2)).close()  # the takeover
    # (On MariaDB the takeover killed the old owner's connections: it resynchronises first.)
    for i in range(100):
        assert (await old.execute(c.Credit("US-0-a", f"cr-{i}", 5))).status == 503
        if old.state == FENCED:
            break
        await asyncio.sleep(0.1)
    assert old.state == FENCED
    new_storage = backend.make(0)
    new_storage.fence_with(2)
    new = ShardEngine(0, new_storage)
    await new.start()
    state = new.account_state("US-0-a")
    assert state is not None and state[schema.ACCOUNT_COLUMNS.index("balance")] == 0  # no credit landed
    assert (await new.execute(c.Credit("US-0-a", "cr-9", 5))).status == 201
    await new.stop()
    await old.stop()
