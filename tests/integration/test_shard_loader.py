"""The bench's shard loader writes what the engine's checkpoint would: a shard that recovers
with its invariants, whose holds the engine then captures, releases and expires like any other
(both backends)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from balance.bench import shard_loader
from balance.domain import commands as c
from balance.domain.model import HOLD_EXPIRES_AT, HOLD_PENDING
from balance.engine.clock import ManualClock
from balance.engine.expiry_sweep import sweep
from balance.engine.shard import ShardEngine
from balance.storage.base import HOLD_KEY_FIRST, ShardStorage


async def test_a_loaded_shard_recovers_and_its_holds_behave(backend: Any) -> None:
    accounts, holds = 7, 40
    await shard_loader.load(backend.make(), accounts, holds)
    clock = ManualClock(int(time.time() * 1_000_000))
    engine = ShardEngine(0, backend.make(), clock=clock, sweep_interval_s=3600, on_fatal=lambda exc: None)
    await engine.start()  # recovery checks the invariants: sums zero, reserved == pending holds
    try:
        ledger = engine.ledger
        assert len(ledger.accounts) == accounts + 2  # and the funding and settlement accounts
        pending = [h for h in ledger.holds.values() if h.status == HOLD_PENDING]
        assert len(pending) == holds
        first = shard_loader.account_id(0)
        assert ledger.accounts[first].reserved == 6  # 40 over 7: the first five get 6
        assert ledger.accounts[shard_loader.account_id(6)].reserved == 5
        on_first = sorted(h.id for h in pending if h.account_id == first)
        assert (await engine.execute(c.CaptureHold(first, on_first[0]))).status == 200
        assert (await engine.execute(c.ReleaseHold(first, on_first[1]))).status == 200
        assert (await engine.execute(c.PlaceHold(first, "new", 1, 60))).status == 201
        assert ledger.accounts[first].balance == shard_loader.FUNDS - 1
        assert ledger.accounts[first].reserved == 6 - 2 + 1
        clock.advance(shard_loader.EXPIRES_IN_S + 1)
        assert await sweep(engine) == holds - 2 + 1
        ledger.check_invariants()
        assert ledger.accounts[first].reserved == 0
    finally:
        await engine.stop()


@pytest.mark.parametrize(("accounts", "holds"), [(7, 40), (5, 3)])
async def test_the_server_side_loader_writes_the_same_rows_as_the_python_one(
    mariadb_backend: Any, accounts: int, holds: int
) -> None:
    """MariaDB's loader makes its rows in SQL: the same ids, spread and sums as ``_spread``
    gives, for more holds than accounts and for fewer."""
    await shard_loader.load(mariadb_backend.make(), accounts, holds)
    engine = ShardEngine(0, mariadb_backend.make(), sweep_interval_s=3600, on_fatal=lambda exc: None)
    await engine.start()  # the invariants: reserved == the pending holds, sums zero
    try:
        ledger = engine.ledger
        expected: list[tuple[str, str]] = []
        n = 0
        for k, count in enumerate(shard_loader._spread(holds, accounts)):
            for _ in range(count):
                expected.append((shard_loader.account_id(k), f"order-{n:010d}"))
                n += 1
            assert ledger.accounts[shard_loader.account_id(k)].reserved == count * shard_loader.HOLD_AMOUNT
        assert sorted((h.account_id, h.id) for h in ledger.holds.values()) == sorted(expected)
        assert len(ledger.accounts) == accounts + 2
    finally:
        await engine.stop()


async def _paged_pending_holds(storage: ShardStorage) -> list[tuple[int, str, str]]:
    """Every pending hold's key (expires_at, account_id, id), as recovery pages through them (7 a page)."""
    seen: list[tuple[int, str, str]] = []
    after = HOLD_KEY_FIRST
    while page := await storage.scan_pending_holds(after, 7):
        seen += [(row[HOLD_EXPIRES_AT], row[0], row[1]) for row in page]
        after = seen[-1]
    return seen


async def test_recoverys_page_of_pending_holds_is_an_index_range_on_mariadb(mariadb_backend: Any) -> None:
    """Each page starts where the last ended (not from the first pending hold again: that made
    10 million holds quadratic), and the pages together are every pending hold once."""
    import asyncmy

    from balance.storage.mariadb_reads import PENDING_HOLDS_PAGE

    storage = mariadb_backend.make()
    await shard_loader.load(storage, 300, 3000)
    await storage.open()
    try:
        middle = shard_loader.account_id(150)
        conn = await asyncmy.connect(**storage.connection_kwargs())
        try:
            async with conn.cursor(asyncmy.cursors.DictCursor) as cur:
                expiry = (await storage.scan_pending_holds(HOLD_KEY_FIRST, 1))[0][HOLD_EXPIRES_AT]
                args = (expiry, expiry, expiry, middle, middle, "order-0000001500", 100)
                await cur.execute("EXPLAIN " + PENDING_HOLDS_PAGE, args)
                plan = (await cur.fetchall())[0]
        finally:
            await conn.ensure_closed()
        assert plan["type"] == "range" and plan["key"] == "PRIMARY", plan
        seen = await _paged_pending_holds(storage)
        assert len(seen) == 3000 and seen == sorted(set(seen))
    finally:
        await storage.close()


async def test_recoverys_page_of_pending_holds_is_an_index_range_on_sqlite(tmp_path: Path) -> None:
    """The page follows the primary key (the table's own order: WITHOUT ROWID) from where the
    last one ended, with no sort: through an index that status led, every page read and sorted
    all pending holds."""
    import sqlite3

    from balance.storage.sqlite import PENDING_HOLDS_PAGE, SqliteShardStorage

    storage = SqliteShardStorage(tmp_path / "s0.db")
    await shard_loader.load(storage, 300, 3000)
    await storage.open()
    try:
        with sqlite3.connect(storage.path) as conn:
            query = "EXPLAIN QUERY PLAN " + PENDING_HOLDS_PAGE
            plan = " ".join(row[3] for row in conn.execute(query, (1, "a", "b", 100)))
        assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
        seen = await _paged_pending_holds(storage)
        assert len(seen) == 3000 and seen == sorted(set(seen))
    finally:
        await storage.close()
