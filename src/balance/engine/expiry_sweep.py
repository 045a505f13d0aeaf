"""The expiry sweep: every ``sweep_interval_s``, the holds past their expiry are queued as
``ExpireHold`` commands, journaled like any other change.

A burst (100,000 holds placed in the same second expire together) goes a slice at a time, each
queued behind the traffic already waiting, the next one 1/SWEEP_SHARE times the writer's time on
the slice after the slice started (``ShardEngine.expiry_busy_s``: its share of the batches that
carried it): expiries then take at most about a fifth of the writer's capacity (its own
count runs over it: see ``SWEEP_SHARE``), and no answer waits behind a hundred thousand of
them. Pacing by the slice's wall time instead counted its wait in the queue and for the
commit as the writer's work: on a busy machine a burst of 100,000 took 15 times as long as
all at once (~7% of the writer, 326 s); a pause of four times the writer's time after each
slice ended, on top of that wait, still kept the share at 9-12% (13 s for 100,000 on a quiet
machine, 1.2-1.5 s all at once).

With the expiry job (``balance.expiry``: a broker configured) the notices expire the holds and
the sweep is the fallback: it takes only holds overdue by more than ``engine.expiry_fallback_s``
(30 s), so a job or broker that is away delays expiries by that much, never more. Each round
also sets ``balance_expiry_lag_seconds`` (the age of the oldest overdue pending hold)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.engine.replies import Unavailable

if TYPE_CHECKING:
    from balance.engine.shard import ShardEngine

# Expiries queued at once: about a millisecond of the writer. Measured in process (100,000
# expiring in the same second, credits at 2,000/s beside, `balance-service bench --scenario
# expiry`): at the same share of the writer, the others' p99 follows the share, not the slice
# (SQLite, ~18%: 64, 96, 128 and 256 all 10-13 ms); a smaller slice costs more of the share's
# count per expiry (a commit's own time for fewer rows), a larger one on MariaDB too (256 at
# 0.17: 11.1-11.7 s; 128 at 0.22: 9.4-9.5 s, both ~18% of its capacity).
SWEEP_SLICE = 128
# Of the writer's time, by its own count (a slice's apply, or its commit after the one before
# it ended). That count runs over the writer's capacity (the capacity: 100,000 queued at once,
# in batches of thousands): on SQLite a commit's sync counts, during which the writer applies
# the next batch; MariaDB's commits overlap (``commits_overlap``). Session 16, slices of 128,
# two runs each: SQLite 0.24 took 12.7-13.3% of its capacity (11.7 s), 0.3 took 16.3-16.5%
# (9.2-9.3 s; the others' p99 10.8-11.3 ms, 4.8-5.1 without the burst), 0.34 18-19% (8.2 s);
# MariaDB 0.22 took 18.8-18.9% (9.4-9.5 s; p99 9.5-10.7 ms, 3.2-3.3 without), 0.26 24.5-25%.
SWEEP_SHARE = 0.3
SWEEP_SHARE_OVERLAPPING = 0.22
SWEEP_PAUSE_MIN_S = 0.002


async def sweep_loop(engine: ShardEngine) -> None:
    lag = engine.metrics.expiry_lag_seconds.labels(engine.label)
    while True:
        await asyncio.sleep(engine.sweep_interval_s)
        try:
            await sweep(engine)
        except Unavailable:
            pass
        lag.set(expiry_lag_s(engine))


def expiry_lag_s(engine: ShardEngine) -> float:
    """The age of the oldest pending hold past its expiry, by the engine's clock (0: none)."""
    now = engine.clock()
    oldest = engine.ledger.oldest_due(now)
    return 0.0 if oldest is None else (now - oldest) / 1_000_000


async def sweep(engine: ShardEngine) -> int:
    """Expire every pending hold past its expiry (as of now, less the fallback's delay in job
    mode), a slice at a time."""
    now = engine.clock() - int(engine.expiry_fallback_s * 1_000_000)
    expired, share = 0, share_of(engine)
    while True:
        due = engine.ledger.due_holds(now, limit=SWEEP_SLICE)
        if not due:
            return expired
        busy_before, started = engine.expiry_busy_s, time.perf_counter()
        expired += await _expire(engine, due)
        if len(due) < SWEEP_SLICE:
            return expired
        await asyncio.sleep(pause_after(engine.expiry_busy_s - busy_before, time.perf_counter() - started, share))


def share_of(engine: ShardEngine) -> float:
    """The sweep's share of the writer's time, by the storage's kind of commit."""
    return SWEEP_SHARE_OVERLAPPING if getattr(engine.storage, "commits_overlap", False) else SWEEP_SHARE


def pause_after(writer_s: float, elapsed_s: float, share: float) -> float:
    """The pause after a slice that took ``writer_s`` of the writer's time and ``elapsed_s``
    since it was queued: the next slice starts once the writer's time is ``share`` of the time
    since this one started (its wait in the queue and for the commit count toward the pause,
    not on top of it), and never without a short pause."""
    return max(SWEEP_PAUSE_MIN_S, writer_s / share - elapsed_s)


async def _expire(engine: ShardEngine, due: list[tuple[str, str]]) -> int:
    try:
        futures = [engine.enqueue(c.ExpireHold(account_id, hold_id)) for account_id, hold_id in due]
    except Unavailable:
        for account_id, hold_id in due:  # not queued: keep them due for the next sweep
            engine.ledger.rearm(account_id, hold_id)
        raise
    replies = await asyncio.gather(*futures)
    for (account_id, hold_id), reply in zip(due, replies, strict=True):
        if reply.status == 503 and b'"account_moving"' in reply.body:  # a move froze it: due again next sweep
            engine.ledger.rearm(account_id, hold_id)
    expired = sum(1 for reply in replies if reply.status == 200)
    engine.metrics.holds_expired.labels(engine.label).inc(expired)
    return expired
