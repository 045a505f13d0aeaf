"""The expiry sweep: every ``sweep_interval_s``, the holds past their expiry are queued as
``ExpireHold`` commands, journaled like any other change.

A burst (100,000 holds placed in the same second expire together) goes a slice at a time, each
queued behind the traffic already waiting, the next one only after a pause four times as long
as the slice took: expiries then take at most about a fifth of the writer's time, and no
answer waits behind a hundred thousand of them."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.engine.replies import Unavailable

if TYPE_CHECKING:
    from balance.engine.shard import ShardEngine

SWEEP_SLICE = 256  # expiries queued at once (a few ms of the writer)
SWEEP_SHARE = 0.2  # of the writer's time, at most (the pause after a slice: 4x its time)
SWEEP_PAUSE_MIN_S = 0.01


async def sweep_loop(engine: ShardEngine) -> None:
    while True:
        await asyncio.sleep(engine.sweep_interval_s)
        try:
            await sweep(engine)
        except Unavailable:
            pass


async def sweep(engine: ShardEngine) -> int:
    """Expire every pending hold past its expiry (as of now), a slice at a time."""
    now = engine.clock()
    expired = 0
    while True:
        due = engine.ledger.due_holds(now, limit=SWEEP_SLICE)
        if not due:
            return expired
        started = time.perf_counter()
        expired += await _expire(engine, due)
        if len(due) < SWEEP_SLICE:
            return expired
        took = time.perf_counter() - started
        await asyncio.sleep(max(SWEEP_PAUSE_MIN_S, took * (1 - SWEEP_SHARE) / SWEEP_SHARE))


async def _expire(engine: ShardEngine, due: list[tuple[str, str]]) -> int:
    try:
        futures = [engine.enqueue(c.ExpireHold(account_id, hold_id)) for account_id, hold_id in due]
    except Unavailable:
        for account_id, hold_id in due:  # not queued: keep them due for the next sweep
            engine.ledger.rearm(account_id, hold_id)
        raise
    replies = await asyncio.gather(*futures)
    expired = sum(1 for reply in replies if reply.status == 200)
    engine.metrics.holds_expired.labels(engine.label).inc(expired)
    return expired
