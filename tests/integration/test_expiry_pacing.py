"""The expiry sweep paces itself by the writer's time spent on its expiries (issue 18), not
by how long a slice waited: a burst takes about a fifth of the writer, however busy the queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from balance.domain import commands as c
from balance.engine import expiry_sweep
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine


async def test_the_pause_after_a_slice_is_four_times_the_writers_time_on_it(
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
        before = [engine.expiry_busy_s]

        async def noted(seconds: float) -> None:
            costs.append(engine.expiry_busy_s - before[0])
            pauses.append(seconds)
            before[0] = engine.expiry_busy_s
            await real_sleep(0)

        monkeypatch.setattr(expiry_sweep.asyncio, "sleep", noted)
        assert await expiry_sweep.sweep(engine) == 30
        assert len(pauses) == 3  # after each full slice of 8 (the last, of 6, ends the sweep)
        assert engine.expiry_busy_s > 0
        for pause, cost in zip(pauses, costs, strict=True):
            assert cost > 0
            assert pause == pytest.approx(max(expiry_sweep.SWEEP_PAUSE_MIN_S, 4 * cost))
        engine.ledger.check_invariants()
    finally:
        await engine.stop()
