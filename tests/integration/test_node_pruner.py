"""A fleet node's outbox pruner follows its leases (``relay.node_pruner``): a shard owned and
ready gets the single-process pruner (a first pass at once), a shard lost loses it (its task
cancelled, its connection closed), a shard taken again gets a new one. Real SQLite shard."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from tests.integration.test_expiry_job import check_books
from tests.integration.test_outbox_pruning import ok, rows

from balance.domain import commands as c
from balance.engine.shard import ShardEngine
from balance.relay.node_pruner import NodePruner
from balance.storage.sqlite import SqliteShardStorage


async def accounts(engine: ShardEngine, first: int, count: int) -> None:
    for n in range(first, first + count):
        account_id = f"EU-0-{n:04x}"
        await ok(engine, c.CreateAccount(account_id, None, "partner", "EU", "EUR", account_id, 0, b"{}"))
        await ok(engine, c.Credit(account_id, f"cr-{n}", 100 + n))  # a journal row


async def outbox_left(engine: ShardEngine, count: int, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while len((await rows(engine))[1]) != count:
            await asyncio.sleep(0.05)


async def test_the_pruner_comes_and_goes_with_the_shard(tmp_path: Path) -> None:
    engine = ShardEngine(0, SqliteShardStorage(tmp_path / "shard-0.db"), sweep_interval_s=3600)
    port = SimpleNamespace(shard=0, engine=None)
    pruner = NodePruner([port], retention_s=0)
    await engine.start()
    try:
        await accounts(engine, 0, 5)
        pruner.refresh()
        assert pruner.running == {}  # not owned: nothing runs

        port.engine = engine  # owned and ready: pruned at once, all but the newest row
        pruner.refresh()
        first = pruner.running[0]
        await outbox_left(engine, 1)
        journal = (await rows(engine))[0]
        assert len(journal) == 5  # the journal whole

        port.engine = None  # lost: its pruner stops
        pruner.refresh()
        assert pruner.running == {}
        await asyncio.sleep(0.1)
        assert first.task.cancelled()
        await accounts(engine, 5, 3)
        pruner.refresh()
        await asyncio.sleep(0.3)
        assert len((await rows(engine))[1]) == 4  # nobody prunes it here now

        port.engine = engine  # taken again: a new pruner, a first pass at once
        pruner.refresh()
        assert pruner.running[0] is not first
        await outbox_left(engine, 1)
        assert (await rows(engine))[0][: len(journal)] == journal
        assert len((await rows(engine))[0]) == 8
        check_books(engine)
    finally:
        await pruner.stop()
        await engine.stop()
    assert pruner.running == {}
