"""A checkpoint is written a slice per batch (issue 18): a crash in the middle of a round, with
rows in the tables newer than the checkpoint seq, still recovers every acknowledged operation
(both backends). The SQLite history table is filled in slices too, and reads stay complete."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from balance.domain import commands as c
from balance.domain.model import HOLD_PENDING
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.storage import sqlite as sqlite_storage
from balance.storage.base import HOLD_KEY_FIRST, ShardStorage

ACCOUNTS = [f"US-0-{k:04x}" for k in range(6)]


async def started(storage: ShardStorage, clock: ManualClock) -> ShardEngine:
    engine = ShardEngine(
        0, storage, clock=clock, sweep_interval_s=3600, on_fatal=lambda exc: None, checkpoint_interval_s=0
    )  # every batch begins a round when none is in progress
    engine.checkpoint_slice_rows = 1  # ... and writes 1 + one per command of it
    await engine.start()
    return engine


def snapshot(engine: ShardEngine) -> tuple[dict[str, Any], dict[Any, Any]]:
    ledger = engine.ledger
    accounts = {k: a.state() for k, a in ledger.accounts.items()}
    pending = {k: h.state() for k, h in ledger.holds.items() if h.status == HOLD_PENDING}
    return accounts, pending


async def test_a_crash_in_the_middle_of_a_checkpoint_round_loses_nothing(backend: Any) -> None:
    rnd = random.Random(18)
    clock = ManualClock()
    engine = await started(backend.make(), clock)
    for account in ACCOUNTS:
        assert (
            await engine.execute(c.CreateAccount(account, None, "partner", "US", "USD", "", 0, b"{}"))
        ).status == 201
        assert (await engine.execute(c.Credit(account, "seed", 10**9))).status == 201
    pending: list[tuple[str, str]] = []
    crashes_mid_round = 0
    counter = 0
    for step in range(12):
        for _ in range(rnd.randint(3, 8)):  # a few batches, of one to several commands
            commands: list[c.Command] = []
            for _ in range(rnd.randint(1, 6)):
                counter += 1
                roll = rnd.random()
                if pending and roll < 0.45:
                    account, hold_id = pending.pop(rnd.randrange(len(pending)))
                    verb = c.CaptureHold if roll < 0.3 else c.ReleaseHold
                    commands.append(verb(account, hold_id))
                elif roll < 0.55:
                    source, destination = rnd.sample(ACCOUNTS, 2)
                    commands.append(c.Transfer(f"t{counter}", source, destination, 3, "USD"))
                else:
                    account = rnd.choice(ACCOUNTS)
                    commands.append(c.PlaceHold(account, f"h{counter}", rnd.randint(1, 50), 900))
                    pending.append((account, f"h{counter}"))
            replies = await asyncio.gather(*(engine.execute(command) for command in commands))
            assert all(reply.status < 300 for reply in replies), [r.body for r in replies if r.status >= 300]
        expected = snapshot(engine)
        if engine.ledger.checkpointing:
            crashes_mid_round += 1
        await engine.stop(checkpoint=step % 4 == 3)  # mostly as a crash: no last checkpoint
        engine = await started(backend.make(), clock)  # recovery checks reserved == pending holds
        assert snapshot(engine) == expected, f"step {step}"
    assert crashes_mid_round >= 3  # the point of the test: rows beyond the checkpoint seq were in the tables
    await engine.stop()


async def test_rounds_come_to_an_end_and_the_tables_are_complete_after_a_clean_stop(backend: Any) -> None:
    clock = ManualClock()
    engine = await started(backend.make(), clock)
    await engine.execute(c.CreateAccount(ACCOUNTS[0], None, "partner", "US", "USD", "", 0, b"{}"))
    await engine.execute(c.Credit(ACCOUNTS[0], "seed", 10**6))
    await asyncio.gather(*(engine.execute(c.PlaceHold(ACCOUNTS[0], f"h{k}", 1, 900)) for k in range(200)))
    rounds_before = engine.metrics.holds_checkpoints.labels("0")._value.get()
    for k in range(100):  # single commands: each batch writes two rows of the round
        await engine.execute(c.Credit(ACCOUNTS[0], f"c{k}", 1))
    assert engine.metrics.holds_checkpoints.labels("0")._value.get() > rounds_before  # a round ended, another began
    expected = snapshot(engine)
    await engine.stop()  # the last checkpoint: the rest of the round and all since
    storage = backend.make()
    await storage.open()
    rows = await storage.scan_pending_holds(HOLD_KEY_FIRST, 1000)
    assert len(rows) == 200 and await storage.checkpoint_seq() == await storage.max_seq()
    await storage.close()
    again = await started(backend.make(), clock)
    assert snapshot(again) == expected
    await again.stop()


async def test_sqlite_history_is_filled_in_slices_and_reads_stay_whole(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(sqlite_storage, "HISTORY_SLICE_ROWS", 8)
    storage = sqlite_storage.SqliteShardStorage(tmp_path / "shard.db")
    engine = await started(storage, ManualClock())
    await engine.execute(c.CreateAccount(ACCOUNTS[0], None, "partner", "US", "USD", "", 0, b"{}"))
    for k in range(60):
        assert (await engine.execute(c.Credit(ACCOUNTS[0], f"c{k}", 1))).status == 201
    filled = storage._history_seq
    assert 0 < filled < await storage.max_seq()  # some in the table, the newest still only in the journal
    history = await storage.history(ACCOUNTS[0], 1000, None, None, None)
    assert [row[2] for row in history] == [f"op:c{k}" for k in reversed(range(60))]
    await engine.stop()
