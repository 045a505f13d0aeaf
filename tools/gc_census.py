"""How many objects the cyclic GC tracks per pending hold and per idempotency record.

An in-process shard engine on a fresh SQLite file (as the bench's ``ours.scratch_storage``)
places N single-operation holds that stay pending, then compares ``gc.get_objects()`` (every
tracked object outside the frozen generation) before and after, by type, each after a full
collection (which untracks tuples and dicts of atomic values). Every hold also leaves an
idempotency record, so "per hold" here is one Hold plus one Record with their containers.

    .venv/bin/python tools/gc_census.py [N]          # the build of this venv (compiled or not)
    .venv/bin/python tools/gc_census.py --load SECONDS RATE [PENDING]

It says whether the domain is compiled (``model.__file__``). ``--load`` instead places single
holds that stay pending at RATE/s (open loop, each its own task) for SECONDS, after PENDING
placed first (default 0), and prints every collection the cyclic GC made meanwhile (count,
total and longest pause per generation, from ``gc.callbacks``) and the holds' latency.

It also times one full collection and one young-generation collection with the holds in place
(``gc.collect(2)`` / ``gc.collect(1)``): the walk a collection makes over them.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from balance.bench import ours
from balance.domain import commands as c
from balance.domain import model
from balance.engine.runtime import tuned
from balance.engine.shard import ShardEngine


def census() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


async def run(holds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="gc-census-"))
    async with ours.scratch_storage("sqlite", work) as (storage, _):
        with tuned():
            engine = ShardEngine(0, storage, sweep_interval_s=3600)
            await engine.start()
            try:
                account = "US-0-census"
                await engine.execute(c.CreateAccount(account, None, "partner", "US", "USD", "", 0, b"{}"))
                await engine.execute(c.Credit(account, "fund", 10**15))
                before = census()
                for start in range(0, holds, 4000):
                    commands = [
                        c.PlaceHold(account, f"h-{k:09d}", 1, 900) for k in range(start, min(holds, start + 4000))
                    ]
                    replies = await asyncio.gather(*(engine.enqueue(command) for command in commands))
                    assert all(reply.status == 201 for reply in replies)
                del commands, replies  # this tool's own: not the shard's
                after = census()
                ledger = engine.ledger
                diff = {name: after[name] - before.get(name, 0) for name in after}
                total = sum(after.values()) - sum(before.values())
                print(f"compiled: {not model.__file__.endswith('.py')}  python {sys.version.split()[0]}")
                print(
                    f"holds placed {holds:,}; in memory: holds {len(ledger.holds):,}, records {len(ledger.records):,}"
                )
                print(f"tracked objects: before {sum(before.values()):,}, after {sum(after.values()):,}")
                print(f"  +{total:,} = {total / holds:.2f} per pending hold (with its idempotency record)")
                for name, n in sorted(diff.items(), key=lambda kv: -kv[1])[:10]:
                    if n:
                        print(f"  {name:<24} {n:>+10,}  {n / holds:.3f}/hold")
                for generation in (1, 2):
                    times = []
                    for _ in range(3):
                        started = time.perf_counter()
                        gc.collect(generation)
                        times.append((time.perf_counter() - started) * 1000)
                    print(f"gc.collect({generation}) with them in place: {sorted(times)[1]:.1f} ms (median of 3)")
                ledger.check_invariants()
            finally:
                await engine.stop()


async def load(seconds: float, rate: int, pending: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="gc-census-"))
    async with ours.scratch_storage("sqlite", work) as (storage, _):
        with tuned():
            engine = ShardEngine(0, storage, sweep_interval_s=3600)
            await engine.start()
            try:
                account = "US-0-census"
                await engine.execute(c.CreateAccount(account, None, "partner", "US", "USD", "", 0, b"{}"))
                await engine.execute(c.Credit(account, "fund", 10**15))
                for start in range(0, pending, 4000):
                    batch = [
                        c.PlaceHold(account, f"p-{k:09d}", 1, 900) for k in range(start, min(pending, start + 4000))
                    ]
                    await asyncio.gather(*(engine.enqueue(command) for command in batch))
                pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
                cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}
                began: list[float] = [0.0, 0.0]

                def on_gc(phase: str, info: dict[str, int]) -> None:
                    if phase == "start":
                        began[:] = time.perf_counter(), time.thread_time()
                    else:
                        pauses[info["generation"]].append(time.perf_counter() - began[0])
                        cpu[info["generation"]].append(time.thread_time() - began[1])

                latencies: list[float] = []
                tasks: set[asyncio.Task[None]] = set()

                async def one(k: int, at: float) -> None:
                    reply = await engine.execute(c.PlaceHold(account, f"l-{k:09d}", 1, 900))
                    assert reply.status == 201
                    latencies.append(time.perf_counter() - at)

                gc.callbacks.append(on_gc)
                start, n = time.perf_counter(), 0
                try:
                    while (elapsed := time.perf_counter() - start) < seconds:
                        while n < int(elapsed * rate) + 1:
                            task = asyncio.create_task(one(n, start + n / rate))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                            n += 1
                        await asyncio.sleep(0.0005)
                    await asyncio.gather(*tasks)
                finally:
                    gc.callbacks.remove(on_gc)
                print(f"compiled: {not model.__file__.endswith('.py')}; {pending:,} pending first, then {n:,} holds")
                print(f"  at {rate:,}/s for {seconds:.0f} s; {len(engine.ledger.holds):,} pending at the end")
                for generation, times in pauses.items():
                    if times:
                        print(
                            f"  gen {generation}: {len(times):>5} collections, {sum(times) * 1000:8.1f} ms in all,"
                            f" longest {max(times) * 1000:6.1f} ms (CPU {max(cpu[generation]) * 1000:.1f} ms;"
                            f" all: {', '.join(f'{t * 1000:.1f}' for t in times[:12])})"
                        )
                latencies.sort()
                pick = [latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000 for q in (0.5, 0.99, 0.999)]
                print(
                    f"  holds' latency ms: p50 {pick[0]:.1f}  p99 {pick[1]:.1f}  p99.9 {pick[2]:.1f}  max {latencies[-1] * 1000:.1f}"
                )
            finally:
                await engine.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        pending_first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        asyncio.run(load(float(sys.argv[2]), int(sys.argv[3]), pending_first))
    else:
        asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
