"""The expiry sweep paces itself by the writer's time spent on its expiries (issue 18), not
by how long a slice waited: a burst takes about a fifth of the writer at most (``SWEEP_SHARE``), however busy the queue.
The slice's own wait counts toward the pause: the next slice starts the writer's time on this
one over ``SWEEP_SHARE`` after this one started, never sooner (a pause of four times it after the slice's end,
on top of its wait, kept the share at 9-12%)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from balance.domain import commands as c
from balance.engine import expiry_sweep
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine


async def test_a_slice_and_its_pause_last_the_writers_time_on_it_over_its_share(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry_sweep, "SWEEP_SLICE", 8)
    clock = ManualClock()
    engine = ShardEngine(0, backend.make(), clock=clock, sweep_interval_s=3600, on_fatal=lambda exc: None)
    await engine.start()
    try:
        assert (
            await engine.execute(c.CreateAccount("US-0-a", None, "partner", "US", "USD", "", 0, b"{}"))
        ).status == 201
        assert (await engine.execute(c.Credit("US-0-a", "f", 1000))).status == 201
        replies = await asyncio.gather(*(engine.execute(c.PlaceHold("US-0-a", f"h{k}", 1, 5)) for k in range(30)))
        assert all(reply.status == 201 for reply in replies)
        clock.advance(6)
        pauses: list[float] = []
        costs: list[float] = []
        real_sleep = asyncio.sleep
        spent: list[float] = []  # from the slice's start to its pause
        before = [engine.expiry_busy_s]
        slice_started = [time.perf_counter()]

        async def noted(seconds: float) -> None:
            spent.append(time.perf_counter() - slice_started[0])
            costs.append(engine.expiry_busy_s - before[0])
            pauses.append(seconds)
            before[0] = engine.expiry_busy_s
            await real_sleep(0)
            slice_started[0] = time.perf_counter()

        monkeypatch.setattr(expiry_sweep.asyncio, "sleep", noted)
        assert await expiry_sweep.sweep(engine) == 30
        assert len(pauses) == 3  # after each full slice of 8 (the last, of 6, ends the sweep)
        assert engine.expiry_busy_s > 0
        for pause, cost, took in zip(pauses, costs, spent, strict=True):
            assert cost > 0
            assert pause >= expiry_sweep.SWEEP_PAUSE_MIN_S
            cycle = cost / expiry_sweep.share_of(engine)
            assert pause <= max(expiry_sweep.SWEEP_PAUSE_MIN_S, cycle)  # its wait is not added on top
            assert took + pause >= cycle * 0.999  # the writer's share stays within SWEEP_SHARE
        engine.ledger.check_invariants()
    finally:
        await engine.stop()


def test_the_slices_own_wait_counts_toward_its_pause() -> None:
    # 6 ms of the writer's time at a fifth: the slice and its pause last 30 ms from its start.
    assert expiry_sweep.pause_after(0.006, 0.008, 0.2) == pytest.approx(0.022)
    assert expiry_sweep.pause_after(0.006, 0.0, 0.2) == pytest.approx(0.030)
    # A slice that waited longer than its cycle still pauses a little before the next.
    assert expiry_sweep.pause_after(0.006, 0.040, 0.2) == expiry_sweep.SWEEP_PAUSE_MIN_S
    assert expiry_sweep.pause_after(0.0, 0.0, 0.2) == expiry_sweep.SWEEP_PAUSE_MIN_S
    # Where commits overlap (MariaDB) the share is smaller: a longer cycle for the same time.
    assert expiry_sweep.pause_after(0.006, 0.008, 0.15) == pytest.approx(0.032)


async def test_the_share_follows_the_storages_kind_of_commit(backend: Any) -> None:
    engine = ShardEngine(0, backend.make(), sweep_interval_s=3600, on_fatal=lambda exc: None)
    expected = expiry_sweep.SWEEP_SHARE_OVERLAPPING if backend.name == "mariadb" else expiry_sweep.SWEEP_SHARE
    # By the sweep's own count, which runs over the writer's capacity: 0.3 of it measured 16-17%
    # of SQLite's capacity, 0.22 about 19% of MariaDB's (expiry_sweep.SWEEP_SHARE).
    assert expiry_sweep.share_of(engine) == expected <= 0.3
