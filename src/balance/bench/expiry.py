"""An expiry burst: ``holds`` pending holds that all expire in the same second (issue 18).

The engine runs in process on a fresh database with a clock the bench moves: the holds are
placed, the clock is moved past their expiry, and the sweep expires them while other traffic
(credits at a fixed rate, open loop) measures what the burst does to everyone else. The same
burst is then expired all at once (every expiry queued together, as the sweep did before) on
a second fill: its time is the writer's full capacity for expiries, so the sliced sweep's share
of the writer is about that time over its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from balance.bench import ours
from balance.bench.results import BenchResult, percentile
from balance.domain import commands as c
from balance.engine import expiry_sweep
from balance.engine.clock import ManualClock
from balance.engine.runtime import tuned
from balance.engine.shard import ShardEngine

ACCOUNTS = 1000
BACKGROUND_RATE = 2000  # credits per second while the burst is expired
QUIET_S = 5.0  # the background traffic alone, before the burst


async def _fill(engine: ShardEngine, holds: int, tag: str) -> list[str]:
    ids = [f"US-0-{tag}{k:08x}" for k in range(ACCOUNTS)]
    setup: list[c.Command] = []
    for account in ids:
        setup += [c.CreateAccount(account, None, "partner", "US", "USD", "", 0, b"{}"), c.Credit(account, "f", 10**12)]
    setup += [c.PlaceHold(ids[k % ACCOUNTS], f"{tag}-{k}", 1, 60) for k in range(holds)]
    for start in range(0, len(setup), 8000):
        replies = await asyncio.gather(*(engine.enqueue(command) for command in setup[start : start + 8000]))
        assert all(reply.status == 201 for reply in replies), "setup failed"
    return ids


async def _background(
    engine: ShardEngine, ids: list[str], stop: asyncio.Event, latencies: list[tuple[float, float]]
) -> None:
    """Credits at ``BACKGROUND_RATE``/s, each timed from its scheduled send time (kept with it)."""
    start, n = time.perf_counter(), 0
    pending: set[asyncio.Task[None]] = set()

    async def one(k: int, at: float) -> None:
        reply = await engine.execute(c.Credit(ids[k % len(ids)], f"bg-{start}-{k}", 1))
        if reply.status == 201:
            latencies.append((at, time.perf_counter() - at))

    while not stop.is_set():
        due = int((time.perf_counter() - start) * BACKGROUND_RATE) + 1
        while n < due:
            task = asyncio.create_task(one(n, start + n / BACKGROUND_RATE))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)


async def _burst(
    engine: ShardEngine, clock: ManualClock, ids: list[str], sliced: bool, quiet_s: float
) -> tuple[float, int, list[float], list[float]]:
    """The burst's seconds and count, and the other traffic's latencies during it and in the
    seconds before it (the same traffic without a burst, for comparison)."""
    latencies: list[tuple[float, float]] = []
    stop = asyncio.Event()
    background = asyncio.create_task(_background(engine, ids, stop, latencies))
    await asyncio.sleep(quiet_s)  # the background traffic alone first
    clock.advance(120)  # every hold is past its expiry
    started = time.perf_counter()
    if sliced:
        expired = await expiry_sweep.sweep(engine)
    else:  # as before: every due hold queued at once
        due = engine.ledger.due_holds(clock(), limit=10**9)
        replies = await asyncio.gather(*(engine.enqueue(c.ExpireHold(a, h)) for a, h in due))
        expired = sum(1 for reply in replies if reply.status == 200)
    seconds = time.perf_counter() - started
    stop.set()
    await background
    quiet = sorted(latency for at, latency in latencies if at < started)
    during = sorted(latency for at, latency in latencies if started <= at < started + seconds)
    return seconds, expired, during, quiet


async def run_expiry_burst(backend: str, *, holds: int, work_dir: Path, quiet_s: float = QUIET_S) -> BenchResult:
    figures = {}
    for sliced in (False, True):
        async with ours.scratch_storage(backend, work_dir) as (storage, _):
            with tuned():
                clock = ManualClock(int(time.time() * 1_000_000))
                engine = ShardEngine(0, storage, clock=clock, sweep_interval_s=3600)
                await engine.start()
                try:
                    ids = await _fill(engine, holds, "s" if sliced else "a")
                    # A stop writes the fill's checkpoint whole; a fresh start then begins with
                    # nothing unsaved, so the part before the burst is the traffic alone.
                    await engine.stop()
                    engine = ShardEngine(0, storage, clock=clock, sweep_interval_s=3600)
                    await engine.start()
                    figures[sliced] = await _burst(engine, clock, ids, sliced, quiet_s)
                    engine.ledger.check_invariants()
                finally:
                    await engine.stop()
    (all_s, all_n, all_lat, _), (sliced_s, sliced_n, sliced_lat, quiet_lat) = figures[False], figures[True]
    assert all_n == holds and sliced_n == holds, (all_n, sliced_n)

    def tail(values: list[float]) -> str:
        return "/".join(f"{percentile(values, q) * 1000:.0f}" for q in (50, 99, 100))

    share = all_s / sliced_s
    notes = (
        f"{holds:,} expired in {sliced_s:.1f}s sliced (all at once: {all_s:.1f}s, so ~{share:.0%} of the writer);"
        f" other traffic p50/p99/max ms: no burst {tail(quiet_lat)}, sliced {tail(sliced_lat)},"
        f" all at once {tail(all_lat)}"
    )
    return BenchResult(
        name="expiry-burst", backend=backend, scenario=f"expiry burst {holds:,}", ops=holds, seconds=sliced_s,
        ops_per_s=holds / sliced_s, p50_ms=percentile(sliced_lat, 50) * 1000,
        p95_ms=percentile(sliced_lat, 95) * 1000, p99_ms=percentile(sliced_lat, 99) * 1000,
        extra={"all_at_once_s": all_s, "writer_share": share, "notes": notes,
               "other_p99_all_at_once_ms": percentile(all_lat, 99) * 1000,
               "other_p99_no_burst_ms": percentile(quiet_lat, 99) * 1000,
               "other_max_no_burst_ms": quiet_lat[-1] * 1000,
               "other_max_sliced_ms": sliced_lat[-1] * 1000, "other_max_all_at_once_ms": all_lat[-1] * 1000},
    )  # fmt: skip
