"""Events derived from what a real shard committed (SQLite file, MariaDB database): every change
has its event, per-account versions are gap-free, each event carries the whole account as it stood."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from balance import views
from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.events import catalogue as cat
from balance.events.stream import EventStream
from balance.relay.sources import source_of

A, B, CHILD = "EU-0-aaaa", "EU-0-bbbb", "EU-0-cccc"


async def started(backend: Any) -> ShardEngine:
    engine = ShardEngine(0, backend.make(), clock=ManualClock(), sweep_interval_s=3600, on_fatal=lambda _: None)
    await engine.start()
    return engine


async def ok(engine: ShardEngine, command: c.Command) -> None:
    reply = await engine.execute(command)
    assert reply.status < 300, (command, reply.status, reply.body)


async def read_all(engine: ShardEngine, page_rows: int, after: int = 0) -> list[dict[str, Any]]:
    """Every event after ``after``, a page at a time, as a relay (re)started there reads them."""
    reader = source_of(engine.storage)
    stream = EventStream(0)
    events: list[dict[str, Any]] = []
    try:
        while True:
            page = await reader.read_page(after, page_rows, stream.missing)
            if not page.journal and not page.outbox:
                return events
            built = stream.build(page.journal, page.outbox, page.accounts, page.later_updates, page.placements)
            events += [json.loads(event.body) for event in built]
            for (
                event
            ) in built:  # each body as msgspec encodes its shape (templates: tests/unit/test_event_templates.py)
                assert views.encoder.encode(msgspec.json.decode(event.body)) == event.body
            after = page.last_seq
    finally:
        await reader.close()


async def a_day_of_business(engine: ShardEngine) -> None:
    for account_id, parent in ((A, None), (B, None), (CHILD, A)):
        await ok(engine, c.CreateAccount(account_id, parent, "partner", "EU", "EUR", account_id, 0, b'{"tier":1}'))
    await ok(engine, c.Credit(A, "cr-1", 10_000))
    await ok(engine, c.Transfer("tr-1", A, B, 2_500, "EUR"))
    await ok(engine, c.PlaceHold(A, "order-1", 1_000, 900))
    await ok(engine, c.CaptureHold(A, "order-1", 400))
    await ok(engine, c.PlaceHold(A, "order-2", 500, 900))
    await ok(engine, c.ReleaseHold(A, "order-2"))
    await ok(engine, c.UpdateAccount(B, status="frozen"))  # the account's other fields change
    await ok(engine, c.UpdateAccount(B, status="active", name="renamed"))
    await ok(engine, c.PlaceHold(B, "all-of-it", 2_500, 900))  # nothing left available: exhausted
    await ok(engine, c.Credit(B, "cr-2", 100))  # replenished
    await ok(engine, c.Debit(A, "db-1", 100))
    refused = await engine.execute(c.Debit(A, "db-too-much", 10**9))  # recorded refusal: no change, no event
    assert refused.status >= 400
    await ok(engine, c.Transfer("tr-2", A, CHILD, 10, "EUR"))


def per_account(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        found.setdefault(event["account_id"], []).append(event)
    return found


async def test_every_change_has_its_event_with_gap_free_versions_and_the_whole_account(backend: Any) -> None:
    engine = await started(backend)
    await a_day_of_business(engine)
    for page_rows in (1, 3, 1000):  # pages that cut operations apart, and one page for all
        events = await read_all(engine, page_rows)
        assert len({event["id"] for event in events}) == len(events)
        assert [event["seq"] for event in events] == sorted(event["seq"] for event in events)
        for account_id, mine in per_account(events).items():
            versions = sorted({event["version"] for event in mine})
            assert versions == list(range(1, engine.ledger.accounts[account_id].version + 1)), (account_id, mine)
            for event in mine:
                assert event["data"]["account"]["version"] == event["version"]
                assert event["shard"] == 0 and event["region"] == "EU"
                assert event["id"] == cat.event_id("EU", 0, event["seq"], event["type"])
            last = mine[-1]["data"]["account"]
            assert last == json.loads(
                views.encoder.encode(views.account_view(engine.ledger.accounts[account_id].state()))
            )
    types = [event["type"] for event in events]
    assert types.count(cat.ACCOUNT_CREATED) == 3
    assert types.count(cat.ACCOUNT_UPDATED) == 2
    assert types.count(cat.ACCOUNT_EXHAUSTED) == 1 and types.count(cat.ACCOUNT_REPLENISHED) == 1
    assert types.count(cat.HOLD_UPDATED) == 5  # 3 placed, 1 captured, 1 released
    transactions = [event for event in events if event["type"] == cat.TRANSACTION_CREATED]
    assert {t["data"]["transaction"]["operation_id"] for t in transactions} >= {"cr-1", "tr-1", "db-1", "tr-2"}
    assert "db-too-much" not in {t["data"]["transaction"]["operation_id"] for t in transactions}
    frozen = next(e for e in events if e["type"] == cat.ACCOUNT_UPDATED)
    assert frozen["data"]["account"]["status"] == "frozen" and frozen["data"]["previous"]["status"] == "active"
    # A transaction of B before its updates shows B as it was then (name and status), not as now.
    first_b = next(e for e in transactions if e["account_id"] == B)
    assert first_b["data"]["account"]["name"] == B and first_b["data"]["account"]["status"] == "active"
    captured = next(e for e in events if e["type"] == cat.HOLD_UPDATED and e["data"]["hold"]["status"] == "captured")
    assert captured["data"]["hold"]["captured_amount"] == 400 and captured["data"]["hold"]["amount"] == 1_000
    exhausted = next(e for e in events if e["type"] == cat.ACCOUNT_EXHAUSTED)
    assert exhausted["data"]["account"]["exhausted"] is True and exhausted["data"]["account"]["available"] == 0
    await engine.stop()


async def test_a_relay_that_starts_mid_history_shows_accounts_as_they_were_at_each_row(backend: Any) -> None:
    """A relay (re)starting at a cursor knows nothing: an account updated after the cursor is
    read as it was (the update's ``previous``), not as the accounts table has it now."""
    engine = await started(backend)
    await a_day_of_business(engine)
    everything = await read_all(engine, 1000)
    for cut in range(0, everything[-1]["seq"]):
        later = await read_all(engine, 2, after=cut)
        assert later == [event for event in everything if event["seq"] > cut]
    await engine.stop()


async def test_a_page_of_settlements_whose_holds_were_placed_before_it(backend: Any) -> None:
    """A relay started after 1,200 holds were placed reads a page of their 1,200 releases: their
    placements (two keys each) are read in parts; SQLite refuses an expression of 2,400 terms."""
    engine = await started(backend)
    try:
        await ok(engine, c.CreateAccount(A, None, "partner", "EU", "EUR", A, 0, b"{}"))
        await ok(engine, c.Credit(A, "seed", 10**6))
        for n in range(1_200):
            engine.enqueue(c.PlaceHold(A, f"h{n}", 1, 600))
        await ok(engine, c.Credit(A, "after-holds", 1))
        placed = engine.ledger.next_seq - 1
        for n in range(1_200):
            engine.enqueue(c.ReleaseHold(A, f"h{n}"))
        await ok(engine, c.Credit(A, "after-releases", 1))
        events = await read_all(engine, 1_500, after=placed)
        released = [e for e in events if e["type"] == cat.HOLD_UPDATED]
        assert len(released) == 1_200
        assert {e["data"]["hold"]["status"] for e in released} == {"released"}
        assert {e["data"]["hold"]["amount"] for e in released} == {1}
    finally:
        await engine.stop()
