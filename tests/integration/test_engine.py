"""The shard writer on a real SQLite file: undo on failed commits, expiry, old ids, fatal invariants."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from faults import FaultyStorage, LosesTheConnectionAtXaCommit

from balance.domain import commands as c
from balance.domain.errors import InvariantViolation
from balance.engine.clock import ManualClock
from balance.engine.expiry_sweep import sweep
from balance.engine.shard import FAILED, ShardEngine
from balance.storage.sqlite import SqliteShardStorage

A, B = "US-0-aaaa", "US-0-bbbb"


def snapshot(engine: ShardEngine) -> tuple:  # type: ignore[type-arg]
    ledger = engine.ledger
    return (
        {k: a.state() for k, a in ledger.accounts.items()},
        {k: h.state() for k, h in ledger.holds.items()},
        set(ledger.records),
        ledger.next_seq,
    )


async def started(path: Path, clock: ManualClock, **kwargs) -> ShardEngine:  # type: ignore[no-untyped-def]
    storage: Any = SqliteShardStorage(path)
    if kwargs.pop("faulty", False):  # faults injected at the port (tests/integration/faults.py)
        storage = FaultyStorage(storage)
    engine = ShardEngine(0, storage, clock=clock, sweep_interval_s=3600, on_fatal=lambda exc: None, **kwargs)
    await engine.start()
    return engine


async def setup_accounts(engine: ShardEngine) -> None:
    for account_id in (A, B):
        reply = await engine.execute(c.CreateAccount(account_id, None, "partner", "US", "USD", account_id, 0, b"{}"))
        assert reply.status == 201
    assert (await engine.execute(c.Credit(A, "seed-a", 10_000))).status == 201
    assert (await engine.execute(c.PlaceHold(A, "open-hold", 1_000, 900))).status == 201
    assert (await engine.execute(c.PlaceHold(A, "to-capture", 500, 900))).status == 201


def mixed_batch() -> list[c.Command]:
    return [
        c.Credit(A, "cr-1", 700),
        c.Debit(A, "db-1", 300),
        c.Transfer("tr-1", A, B, 2_000, "USD"),
        c.PlaceHold(A, "new-hold", 1_500, 900),
        c.CaptureHold(A, "to-capture", 200),
        c.ReleaseHold(A, "open-hold"),
        c.PlaceHold(B, "b-hold", 100, 900),
        c.Credit(B, "cr-2", 5),
    ]


async def test_a_failed_commit_undoes_the_whole_batch_in_memory_and_on_disk(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = await started(tmp_path / "s0.db", clock, faulty=True)
    await setup_accounts(engine)
    before = snapshot(engine)
    assert isinstance(engine.storage, FaultyStorage)
    engine.storage.fail("commit")

    replies = await asyncio.gather(*(engine.enqueue(command) for command in mixed_batch()))

    assert [r.status for r in replies] == [503] * len(replies)
    assert {json.loads(r.body)["code"] for r in replies} == {"unavailable"}
    assert snapshot(engine) == before
    engine.ledger.check_invariants()
    assert engine.metrics.commit_failures.labels("0")._value.get() == 1
    await engine.stop()

    reopened = await started(tmp_path / "s0.db", clock)
    assert {k: a.state() for k, a in reopened.ledger.accounts.items()} == before[0]
    assert reopened.ledger.next_seq == before[3]
    # The same ids, retried, are applied now: nothing of the failed batch was half-kept.
    retried = await asyncio.gather(*(reopened.enqueue(command) for command in mixed_batch()))
    assert [r.status for r in retried] == [201, 201, 201, 201, 200, 200, 201, 201]
    assert not any(r.replayed for r in retried)
    reopened.ledger.check_invariants()
    assert reopened.ledger.accounts[A].balance == 10_000 + 700 - 300 - 2_000 - 200
    assert reopened.ledger.accounts[A].reserved == 1_500
    await reopened.stop()


async def test_a_hold_past_its_expiry_is_expired_by_the_sweep_and_stays_expired_after_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = await started(tmp_path / "s0.db", clock)
    await setup_accounts(engine)
    assert (await engine.execute(c.PlaceHold(A, "short", 100, 5))).status == 201
    assert engine.ledger.accounts[A].reserved == 1_600
    clock.advance(4)
    assert await sweep(engine) == 0
    clock.advance(2)
    assert await sweep(engine) == 1
    assert engine.ledger.accounts[A].reserved == 1_500
    assert engine.ledger.holds[(A, "short")].status == "expired"
    rows = await engine.storage.history(A, 10, None, None, None)
    assert rows[0][3] == "expire" and rows[0][4] == "short"
    await engine.stop()

    reopened = await started(tmp_path / "s0.db", clock)
    assert reopened.ledger.accounts[A].reserved == 1_500
    hold = await reopened.hold_state(A, "short")
    assert hold is not None and hold[5] == "expired"
    capture = await reopened.execute(c.CaptureHold(A, "short"))
    assert (capture.status, json.loads(capture.body)["code"]) == (409, "hold_not_pending")
    await reopened.stop()


async def test_holds_that_expire_while_the_service_is_down_expire_after_recovery(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = await started(tmp_path / "s0.db", clock)
    await setup_accounts(engine)
    await engine.stop()
    clock.advance(901)
    reopened = ShardEngine(0, SqliteShardStorage(tmp_path / "s0.db"), clock=clock, sweep_interval_s=0.01)
    await reopened.start()
    for _ in range(500):  # the engine's own sweep loop, bounded wait
        if reopened.ledger.accounts[A].reserved == 0:
            break
        await asyncio.sleep(0.01)
    assert reopened.ledger.accounts[A].reserved == 0
    assert {h.status for h in reopened.ledger.holds.values()} == {"expired"}
    reopened.ledger.check_invariants()
    await reopened.stop()


async def test_an_old_operation_id_no_longer_in_memory_is_still_answered_with_its_first_outcome(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = await started(tmp_path / "s0.db", clock, records_max=5, finished_holds_max=2)
    await setup_accounts(engine)
    first = await engine.execute(c.Credit(A, "old-credit", 42))
    assert (await engine.execute(c.CaptureHold(A, "to-capture", 100))).status == 200
    for i in range(20):
        assert (await engine.execute(c.Credit(A, f"filler-{i}", 1))).status == 201
        assert (await engine.execute(c.PlaceHold(A, f"h-{i}", 1, 900))).status == 201
        assert (await engine.execute(c.ReleaseHold(A, f"h-{i}"))).status == 200
    assert (A, "credit:old-credit") not in engine.ledger.records
    assert (A, "to-capture") not in engine.ledger.holds
    balance = engine.ledger.accounts[A].balance

    replay = await engine.execute(c.Credit(A, "old-credit", 42))
    assert (replay.status, replay.body, replay.replayed) == (first.status, first.body, True)
    conflict = await engine.execute(c.Credit(A, "old-credit", 43))
    assert json.loads(conflict.body)["code"] == "idempotency_conflict"
    again = await engine.execute(c.CaptureHold(A, "to-capture", 100))
    assert again.replayed and again.status == 200
    other = await engine.execute(c.ReleaseHold(A, "to-capture"))
    assert json.loads(other.body)["code"] == "hold_not_pending"
    assert engine.ledger.accounts[A].balance == balance
    engine.ledger.check_invariants()
    await engine.stop()


async def test_a_broken_invariant_stops_the_shard_and_answers_unavailable(tmp_path: Path) -> None:
    fatal: list[BaseException] = []
    engine = ShardEngine(0, SqliteShardStorage(tmp_path / "s0.db"), on_fatal=fatal.append, sweep_interval_s=3600)
    await engine.start()
    await setup_accounts(engine)
    engine.ledger.accounts[A].reserved = -1  # corruption no rule can produce
    reply = await engine.execute(c.Credit(A, "after-corruption", 1))
    assert reply.status == 503
    await asyncio.sleep(0)
    assert engine.state == FAILED
    assert len(fatal) == 1 and isinstance(fatal[0], InvariantViolation)
    with pytest.raises(InvariantViolation):
        engine.ledger.check_invariants()
    await engine.stop()


async def slowly(*_: object) -> None:
    """A hook for ``FaultyStorage.before``: the next call takes a while (batches pile up on top)."""
    await asyncio.sleep(0.2)


def slow_then_failing(storage: ShardEngine) -> None:
    """The next commit takes a while, so that batches are applied on top of it, then fails."""
    assert isinstance(storage.storage, FaultyStorage)
    storage.storage.before("commit", slowly)
    storage.storage.fail("commit")


async def test_a_commit_that_landed_but_reported_failure_is_found_and_memory_reloaded(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = await started(tmp_path / "s0.db", clock, faulty=True)
    await setup_accounts(engine)
    assert isinstance(engine.storage, FaultyStorage)
    engine.storage.fail("commit", landed=True, error="injected: connection lost after COMMIT")

    replies = await asyncio.gather(*(engine.enqueue(command) for command in mixed_batch()))

    assert {r.status for r in replies} == {503}
    for _ in range(200):  # the shard resynchronises by itself (bounded wait)
        if engine.ready:
            break
        await asyncio.sleep(0.01)
    assert engine.ready
    engine.ledger.check_invariants()
    assert engine.ledger.accounts[A].balance == 10_000 + 700 - 300 - 2_000 - 200  # what is durable
    retried = await asyncio.gather(*(engine.enqueue(command) for command in mixed_batch()))
    assert all(r.replayed for r in retried)
    assert [r.status for r in retried] == [201, 201, 201, 201, 200, 200, 201, 201]
    assert engine.ledger.accounts[A].balance == 10_000 + 700 - 300 - 2_000 - 200  # not applied twice
    await engine.stop()


async def test_when_a_commit_fails_the_batch_applied_on_top_of_it_is_undone_too(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = await started(tmp_path / "s0.db", clock, faulty=True)
    await setup_accounts(engine)
    before = snapshot(engine)
    slow_then_failing(engine)

    first = [engine.enqueue(c.Credit(A, "first-1", 10)), engine.enqueue(c.PlaceHold(A, "first-h", 10, 900))]
    await asyncio.sleep(0.05)  # the first batch is committing (slowly) now
    assert engine.ledger.batches_in_flight == 1
    second = [engine.enqueue(c.Credit(A, "second-1", 10)), engine.enqueue(c.Transfer("second-t", A, B, 5, "USD"))]
    for _ in range(100):
        if engine.ledger.batches_in_flight == 2:  # the second batch is applied on top of the first
            break
        await asyncio.sleep(0.001)
    assert engine.ledger.batches_in_flight == 2
    replies = await asyncio.gather(*first, *second)

    assert [r.status for r in replies] == [503, 503, 503, 503]
    for _ in range(200):
        if engine.ready:
            break
        await asyncio.sleep(0.01)
    assert snapshot(engine) == before
    again = await asyncio.gather(
        engine.enqueue(c.Credit(A, "first-1", 10)), engine.enqueue(c.Transfer("second-t", A, B, 5, "USD"))
    )
    assert [(r.status, r.replayed) for r in again] == [(201, False), (201, False)]
    engine.ledger.check_invariants()
    await engine.stop()


async def test_on_mariadb_a_connection_lost_at_xa_commit_undoes_both_batches_in_flight(mariadb_backend: Any) -> None:
    """Large batches commit as XA branches, two in flight: the first loses its connection at
    XA COMMIT, the one applied on top must not commit, memory must match storage after."""
    backend = mariadb_backend
    storage = LosesTheConnectionAtXaCommit.like(backend.new())
    backend.created.append(storage)
    engine = ShardEngine(
        0, storage, clock=ManualClock(), sweep_interval_s=3600, on_fatal=lambda exc: None, batch_max=500
    )
    await engine.start()
    await setup_accounts(engine)
    holds = [c.PlaceHold(A, f"h-{n}", 1, 900) for n in range(2000)]
    storage.armed = True

    replies = await asyncio.gather(*(engine.enqueue(command) for command in holds))

    assert not storage.armed
    assert {r.status for r in replies[:1000]} == {503}  # the first two batches: undone
    for _ in range(500):
        if engine.ready:
            break
        await asyncio.sleep(0.01)
    assert engine.ready
    engine.ledger.check_invariants()
    placed = sum(r.status == 201 for r in replies)
    assert engine.ledger.accounts[A].reserved == 1_500 + placed
    in_memory = snapshot(engine)
    await engine.stop()

    again = ShardEngine(0, backend.make(), clock=ManualClock(), sweep_interval_s=3600, on_fatal=lambda exc: None)
    await again.start()
    assert snapshot(again)[:2] == in_memory[:2]  # storage holds exactly what memory held
    retried = await asyncio.gather(*(again.enqueue(command) for command in holds))
    assert {r.status for r in retried} == {201}
    assert sum(r.replayed for r in retried) == placed
    assert again.ledger.accounts[A].reserved == 1_500 + 2_000
    again.ledger.check_invariants()
    await again.stop()


async def test_an_idle_writer_takes_half_of_a_long_queue_so_the_other_half_overlaps_its_commit(
    tmp_path: Path,
) -> None:
    engine = await started(tmp_path / "s0.db", ManualClock(), faulty=True, batch_max=8190)
    await setup_accounts(engine)
    storage = engine.storage
    assert isinstance(storage, FaultyStorage)
    storage.calls.clear()

    def sizes() -> list[int]:  # journal rows of each batch committed
        return [len(batch.journal) for batch, *_ in storage.calls["commit"]]

    replies = await asyncio.gather(*(engine.enqueue(c.Credit(A, f"c-{n}", 1)) for n in range(3000)))

    assert {r.status for r in replies} == {201}
    assert sizes() == [1500, 1500]  # not one batch of 3,000
    storage.calls.clear()
    replies = await asyncio.gather(*(engine.enqueue(c.Credit(A, f"d-{n}", 1)) for n in range(300)))
    assert sizes() == [300]  # a short queue goes whole
    assert engine.ledger.accounts[A].balance == 10_000 + 3_300
    await engine.stop()


async def _in_flight(engine: ShardEngine, batches: int) -> None:
    for _ in range(200):
        if engine.ledger.batches_in_flight == batches:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{engine.ledger.batches_in_flight} batches in flight, not {batches}")


async def test_small_batches_applied_while_one_commits_go_out_together_and_all_are_answered(tmp_path: Path) -> None:
    engine = await started(tmp_path / "s0.db", ManualClock(), faulty=True)
    await setup_accounts(engine)
    storage = engine.storage
    assert isinstance(storage, FaultyStorage)
    storage.calls.clear()
    storage.before("commit", slowly)
    waves = []
    for wave in range(3):  # one batch being written, two applied on top of it
        waves.append([engine.enqueue(c.Credit(A, f"w{wave}-{n}", 1)) for n in range(5)])
        await _in_flight(engine, wave + 1)
    replies = await asyncio.gather(*(future for wave in waves for future in wave))

    assert {(r.status, r.replayed) for r in replies} == {(201, False)}
    assert len(storage.calls["commit"]) == 3  # three batches (SQLite writes the two behind in one
    # transaction: tests/integration/test_sqlite_writer.py)
    engine.ledger.check_invariants()
    in_memory = snapshot(engine)
    await engine.stop()
    again = await started(tmp_path / "s0.db", ManualClock())
    assert snapshot(again)[:2] == in_memory[:2]
    assert again.ledger.accounts[A].balance == 10_000 + 15
    await again.stop()


async def test_when_a_commit_fails_the_two_small_batches_applied_on_top_are_undone_too(tmp_path: Path) -> None:
    engine = await started(tmp_path / "s0.db", ManualClock(), faulty=True)
    await setup_accounts(engine)
    before = snapshot(engine)
    slow_then_failing(engine)
    waves = []
    for wave, commands in enumerate(
        (
            [c.Credit(A, "first-1", 10), c.PlaceHold(A, "first-h", 10, 900)],
            [c.Credit(A, "second-1", 10), c.Transfer("second-t", A, B, 5, "USD")],
            [c.CaptureHold(A, "to-capture", 100), c.Debit(B, "third-d", 1)],
        )
    ):
        waves.append([engine.enqueue(command) for command in commands])
        await _in_flight(engine, wave + 1)
    replies = await asyncio.gather(*(future for wave in waves for future in wave))

    assert [r.status for r in replies] == [503] * 6
    for _ in range(200):
        if engine.ready:
            break
        await asyncio.sleep(0.01)
    assert engine.ready
    assert snapshot(engine) == before
    await engine.stop()
    again = await started(tmp_path / "s0.db", ManualClock())
    assert snapshot(again)[:2] == before[:2]  # nothing of the three batches was written
    replies = await asyncio.gather(
        again.enqueue(c.Credit(A, "first-1", 10)), again.enqueue(c.CaptureHold(A, "to-capture", 100))
    )
    assert [(r.status, r.replayed) for r in replies] == [(201, False), (200, False)]
    again.ledger.check_invariants()
    await again.stop()


class FailsWhileTheNextBatchReads:
    """Hooks for ``FaultyStorage``: the next commit (``commit_waits``) waits until the engine
    reads storage for the batch after it (``read_waits``), and that read goes on only once the
    commit has ended (here: refused for a stale operation id): a commit failing during the next
    batch's prefetch."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.failing_commit: asyncio.Task[Any] | None = None

    async def commit_waits(self, *_: object) -> None:
        self.failing_commit = asyncio.current_task()  # the engine's task for this commit
        await asyncio.wait_for(self.reading.wait(), 5)

    async def read_waits(self, *_: object) -> None:
        self.reading.set()
        assert self.failing_commit is not None
        await asyncio.wait([self.failing_commit], timeout=5)
        assert self.failing_commit.done()


async def test_a_commit_failing_while_the_next_batch_reads_storage_is_retried_before_that_batch(
    tmp_path: Path,
) -> None:
    """Batch 1 (a stale hold id, and a new hold) fails while batch 2 (a capture of that new
    hold, and an old capture that must be read from storage) is being prefetched. Batch 1 is
    applied again first, as replays where learnt, and only then batch 2: the capture finds its
    hold. Applying batch 2 at once (ignoring the failure) would answer it ``hold_not_found``."""
    path = tmp_path / "s0.db"
    engine = await started(path, ManualClock())
    await setup_accounts(engine)
    first = await engine.execute(c.PlaceHold(A, "old-1", 10, 900))
    assert first.status == 201
    assert (await engine.execute(c.PlaceHold(A, "old-2", 20, 900))).status == 201
    assert (await engine.execute(c.CaptureHold(A, "old-1"))).status == 200
    old_capture = await engine.execute(c.CaptureHold(A, "old-2"))
    assert old_capture.status == 200
    await engine.stop()

    engine = await started(path, ManualClock(), faulty=True)
    storage, gates = engine.storage, FailsWhileTheNextBatchReads()
    assert isinstance(storage, FaultyStorage)
    assert engine.ledger.holds.find(A, "old-1") is None and engine.ledger.holds.find(A, "old-2") is None
    assert not engine.ledger.records  # a clean stop leaves no journal tail to learn outcomes from
    balance = engine.ledger.accounts[A].balance
    storage.before("commit", gates.commit_waits)
    wave_1 = [engine.enqueue(c.PlaceHold(A, "old-1", 10, 900)), engine.enqueue(c.PlaceHold(A, "new-h", 30, 900))]
    await _in_flight(engine, 1)
    storage.before("lookup", gates.read_waits)
    wave_2 = [engine.enqueue(c.CaptureHold(A, "new-h")), engine.enqueue(c.CaptureHold(A, "old-2"))]
    replies = await asyncio.gather(*wave_1, *wave_2)

    assert gates.failing_commit is not None and gates.failing_commit.exception() is not None
    assert gates.reading.is_set() and not storage.armed  # it failed while the next batch read storage
    assert [(r.status, r.replayed) for r in replies] == [(201, True), (201, False), (200, False), (200, True)]
    assert replies[0].body == first.body and replies[3].body == old_capture.body
    assert engine.ledger.accounts[A].balance == balance - 30
    engine.ledger.check_invariants()
    accounts, holds = snapshot(engine)[:2]
    await engine.stop()
    again = await started(path, ManualClock())
    pending = {key: hold for key, hold in holds.items() if hold[5] == "pending"}  # finished ones stay on disk
    assert snapshot(again)[:2] == (accounts, pending)
    await again.stop()


async def test_the_commit_busy_time_counts_the_time_commits_were_in_flight_once(tmp_path: Path) -> None:
    """``balance_commit_busy_seconds``: pipelined commits overlap, and the overlap counts once, so
    the busy time is never more than the time that passed, nor more than the commits' durations."""
    engine = await started(tmp_path / "s0.db", ManualClock())
    await setup_accounts(engine)
    busy, durations = engine.metrics.commit_busy.labels("0"), engine.metrics.commit_seconds.labels("0")
    busy_before, durations_before = busy._value.get(), durations._sum.get()
    began = time.perf_counter()

    replies = await asyncio.gather(*(engine.enqueue(c.Credit(A, f"busy-{i}", 1)) for i in range(3_000)))

    elapsed = time.perf_counter() - began
    assert {reply.status for reply in replies} == {201}
    spent = busy._value.get() - busy_before
    assert 0 < spent <= elapsed
    assert spent <= durations._sum.get() - durations_before + 1e-9

    busy_before, durations_before = busy._value.get(), durations._sum.get()
    for i in range(20):  # one at a time: nothing overlaps, each commit's whole duration counts
        assert (await engine.execute(c.Credit(A, f"alone-{i}", 1))).status == 201
    assert busy._value.get() - busy_before == pytest.approx(durations._sum.get() - durations_before, rel=1e-6)
    await engine.stop()
