"""Where a single-operation load's tail comes from in the writer, batch by batch, in process.

    BALANCE_PURE_PYTHON=1 install, then: .venv/bin/python tools/writer_stalls.py [RATE] [SECONDS]

Places holds that stay pending on 10,000 accounts at RATE/s (default 4,600, open loop) through
``ShardEngine`` on a SQLite file, and prints the answers' p50/p99/max, the batches whose apply
or commit took longest (with the checkpoint rows they carried), and every time the writer
finished a WAL copy itself (``SqliteShardStorage._finish_wal_copy``) and how long it took.
It wraps engine and storage methods, so it needs the interpreted code (the compiled classes'
methods cannot be wrapped).

Session 13 (quiet machine, 4,600/s): p50 1.8 ms, p99 4.3-6.7 ms; every ~3 s the writer
finished the WAL copy (0.6-20 ms: a sync of the database file) and the commits around it took
12-20 ms, the largest stalls left on SQLite at half the single-operation rate.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import balance.storage.sqlite as sqlite_storage
from balance.domain import commands as c
from balance.engine import shard as shard_module
from balance.engine.runtime import tuned
from balance.storage.sqlite import SqliteShardStorage

RATE = int(sys.argv[1]) if len(sys.argv) > 1 else 4600
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 12.0
ACCOUNTS = 10_000

batches: list[tuple[float, float, float, int, int]] = []  # started, applied s, commit s, commands, hold rows
finishes: list[tuple[float, float, int]] = []  # at, seconds, WAL frames before

_committed = shard_module.ShardEngine._committed
_finish = SqliteShardStorage._finish_wal_copy


def committed(self: Any, batch: Any, task: Any) -> None:
    batches.append((batch.started, batch.applied_s, time.perf_counter() - batch.started, len(batch.items),
                    len(batch.write.holds)))
    _committed(self, batch, task)


def finish(self: Any, conn: Any) -> None:
    started, frames = time.perf_counter(), self._wal_frames
    _finish(self, conn)
    if self._wal_frames != frames:
        finishes.append((started, time.perf_counter() - started, frames))


async def main() -> None:
    if hasattr(shard_module, "__file__") and str(shard_module.__file__).endswith(".so"):
        sys.exit("writer_stalls.py needs the interpreted code (BALANCE_PURE_PYTHON=1 pip install -e .)")
    shard_module.ShardEngine._committed = committed  # type: ignore[method-assign]
    sqlite_storage.SqliteShardStorage._finish_wal_copy = finish  # type: ignore[method-assign]
    directory = Path(tempfile.mkdtemp(prefix="writer-stalls-"))
    with tuned():
        engine = shard_module.ShardEngine(0, SqliteShardStorage(directory / "shard-0.db"), sweep_interval_s=3600)
        await engine.start()
        ids = [f"US-0-{k:08x}" for k in range(ACCOUNTS)]
        setup: list[c.Command] = []
        for account in ids:
            setup += [c.CreateAccount(account, None, "partner", "US", "USD", "", 0, b"{}"), c.Credit(account, "f", 10**12)]
        for start in range(0, len(setup), 5000):
            await asyncio.gather(*(engine.enqueue(command) for command in setup[start : start + 5000]))
        batches.clear()
        latencies: list[float] = []
        pending: set[asyncio.Future[None]] = set()
        began, sent = time.perf_counter(), 0

        async def one(k: int, at: float) -> None:
            await engine.enqueue(c.PlaceHold(ids[k % ACCOUNTS], f"p{k}", 1, 900))
            latencies.append(time.perf_counter() - at)

        while time.perf_counter() - began < SECONDS:
            due = int((time.perf_counter() - began) * RATE)
            while sent < due:
                task = asyncio.ensure_future(one(sent, began + sent / RATE))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*pending)
        await engine.stop()
    latencies.sort()
    print(f"{len(latencies)} holds at {RATE}/s: p50 {latencies[len(latencies) // 2] * 1000:.1f}"
          f" p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} max {latencies[-1] * 1000:.1f} ms")
    for title, key in (("longest applies", 1), ("longest commits", 2)):
        print(title)
        for started, applied, commit, commands, holds in sorted(batches, key=lambda b: -b[key])[:6]:
            print(f"  t={started - began:6.2f}s apply {applied * 1000:6.2f} ms commit {commit * 1000:6.2f} ms,"
                  f" {commands} commands, {holds} checkpoint hold rows")
    for at, seconds, frames in finishes:
        print(f"writer finished the WAL copy at t={at - began:6.2f}s: {seconds * 1000:.2f} ms ({frames} frames)")


if __name__ == "__main__":
    asyncio.run(main())
