"""Without a broker the feed prunes the outbox itself: account facts older than the retention
go, a slice at a time; journal rows never do. A feed cursor older than what was pruned is told
so (``CursorExpired``: 410 ``cursor_expired`` on the route); no cursor starts at the oldest
event kept; the newest outbox row stays, so no seq is ever given out twice after a restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tests.integration.test_expiry_job import check_books

from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.events import catalogue as cat
from balance.events.stream import EventStream
from balance.relay.feed import CursorExpired, EventsFeed
from balance.relay.sources import source_of

DAY_S = 86_400.0


async def ok(engine: ShardEngine, command: c.Command) -> None:
    reply = await engine.execute(command)
    assert reply.status < 300, (command, reply.status, reply.body)


async def rows(engine: ShardEngine) -> tuple[list[int], list[int]]:
    """The seqs of every journal row and every outbox row in the shard database."""
    source = source_of(engine.storage)
    try:
        page = await source.read_page(0, 100_000, EventStream(0).missing)
    finally:
        await source.close()
    return [int(r[0]) for r in page.journal], [int(r[0]) for r in page.outbox]


def everyone(_: str) -> bool:
    return True


async def pruned_once(feed: EventsFeed, timeout_s: float = 10.0) -> None:
    """The pruner as the service runs it (a task), until its first pass is done."""
    passes = feed.prune_passes
    task = asyncio.create_task(feed.run_pruner())
    try:
        async with asyncio.timeout(timeout_s):
            while feed.prune_passes == passes:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_outbox_rows_past_retention_are_pruned_and_an_older_cursor_is_expired(backend: Any) -> None:
    clock = ManualClock()
    engine = ShardEngine(0, backend.make(), clock=clock, sweep_interval_s=3600, on_fatal=lambda _: None)
    await engine.start()
    # Day 1: 700 accounts (an outbox row each: more than one slice), money between two of them.
    ids = [f"EU-0-{n:04x}" for n in range(700)]
    for account_id in ids:
        await ok(engine, c.CreateAccount(account_id, None, "partner", "EU", "EUR", account_id, 0, b"{}"))
    await ok(engine, c.Credit(ids[0], "cr-1", 1_000))
    await ok(engine, c.Transfer("tr-1", ids[0], ids[1], 300, "EUR"))
    await ok(engine, c.PlaceHold(ids[1], "order-1", 100, 900))
    day1_last = engine.ledger.next_seq - 1
    _, outbox_day1 = await rows(engine)
    assert len(outbox_day1) >= 700
    clock.advance(2 * DAY_S)
    # Day 3: a new account and money; its facts are young.
    await ok(engine, c.CreateAccount("EU-0-ffff", None, "partner", "EU", "EUR", "late", 0, b"{}"))
    await ok(engine, c.Credit("EU-0-ffff", "cr-2", 50))
    await ok(engine, c.UpdateAccount("EU-0-ffff", name="later"))  # the shard's newest row: an outbox row
    journal_before, outbox_before = await rows(engine)

    feed = EventsFeed([source_of(engine.storage)], (), retention_s=DAY_S)
    feed.clock = lambda: clock() / 1e6
    try:
        await pruned_once(feed)
        journal_after, outbox_after = await rows(engine)
        assert journal_after == journal_before  # the journal is the record: never pruned
        assert outbox_after == [s for s in outbox_before if s > max(outbox_day1)]  # day 1's facts gone
        assert outbox_after  # day 3's kept
        watermark = await feed.sources[0].pruned()
        assert watermark == max(outbox_day1)

        # A cursor older than the pruned range: told, with the cursor it may resume at.
        with pytest.raises(CursorExpired) as expired:
            await feed.read([0], 100, everyone)
        assert expired.value.oldest == [watermark]
        with pytest.raises(CursorExpired):
            await feed.read([watermark - 1], 100, everyone)
        # No cursor: from the oldest event kept, complete from there on.
        found, after = await feed.read([0], 1000, everyone, fresh=True)
        assert found and min(e.seq for e in found) > watermark
        kinds = {(json.loads(e.body)["type"], e.account_id) for e in found}
        assert (cat.ACCOUNT_CREATED, "EU-0-ffff") in kinds
        # A cursor at or past the watermark reads on as before.
        resumed, _ = await feed.read([day1_last], 1000, everyone)
        assert [e.seq for e in resumed] == [e.seq for e in found if e.seq > day1_last]
        assert after == [engine.ledger.next_seq - 1]

        # Days later, nothing written since: the newest outbox row is kept (its seq is the
        # largest: a restart must not give it out again).
        clock.advance(5 * DAY_S)
        deleted = await feed.prune(int(clock() - DAY_S * 1e6), 500)
        assert deleted == len(outbox_after) - 1
        _, outbox_late = await rows(engine)
        assert outbox_late == [max(outbox_before)]
    finally:
        await feed.close()
    check_books(engine)
    newest = max(outbox_before)
    assert newest > max(journal_before)
    await engine.stop()

    again = ShardEngine(0, backend.make(), clock=clock, sweep_interval_s=3600, on_fatal=lambda _: None)
    await again.start()
    try:
        assert again.ledger.next_seq == newest + 1
        await ok(again, c.Credit("EU-0-ffff", "cr-3", 7))
        journal_end, _ = await rows(again)
        assert journal_end == [*journal_before, newest + 1]  # a new seq, above every row ever written
        check_books(again)
    finally:
        await again.stop()
