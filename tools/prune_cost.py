"""What pruning the outbox (no broker: ``EventsFeed.run_pruner``) costs the money path.

    .venv/bin/python tools/prune_cost.py [OLD_ROWS] [SECONDS] [--mariadb]

A SQLite shard (``--mariadb``: a fresh MariaDB database) starts with OLD_ROWS (default 300,000)
outbox rows two days old; the real engine then takes credits from 64 callers for SECONDS
(default 8), twice on fresh copies: once alone, once while the pruner deletes the old rows
(slices of 500, 50 ms apart, as the service does). Prints each run's operations per second,
p50/p99 of an operation's answer, and the rows pruned per second.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from balance.domain import commands as c
from balance.engine.shard import ShardEngine
from balance.relay.feed import EventsFeed
from balance.relay.sources import source_of
from balance.storage.base import ShardStorage

CALLERS = 64
DAY_US = 86_400 * 1_000_000


def seed_sqlite(path: Path, rows: int) -> None:
    import sqlite3

    old = int(time.time() * 1e6) - 2 * DAY_US
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO outbox (seq, kind, account_id, version, created_at, data) VALUES (?, ?, ?, ?, ?, NULL)",
            ((seq, "account_updated", "EU-0-0000", seq, old + seq) for seq in range(1, rows + 1)),
        )


async def seed_mariadb(storage: ShardStorage, rows: int) -> None:
    import asyncmy

    old = int(time.time() * 1e6) - 2 * DAY_US
    conn = await asyncmy.connect(host=storage.host, port=storage.port, user=storage.user,  # type: ignore[attr-defined]
                                 password=storage.password, database=storage.database, autocommit=True)  # type: ignore[attr-defined]  # fmt: skip
    async with conn.cursor() as cur:
        for start in range(1, rows + 1, 5000):
            values = [
                (s, "account_updated", "EU-0-0000", s, old + s, None) for s in range(start, min(rows, start + 4999) + 1)
            ]
            await cur.executemany(
                "INSERT INTO outbox (seq, kind, account_id, version, created_at, data) VALUES (%s, %s, %s, %s, %s, %s)",
                values,
            )
    conn.close()


async def load(engine: ShardEngine, seconds: float) -> tuple[int, list[float]]:
    for n in range(CALLERS):
        reply = await engine.execute(c.CreateAccount(f"EU-0-{n + 1:04x}", None, "partner", "EU", "EUR", "x", 0, b"{}"))
        assert reply.status < 300, reply.body
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller(n: int) -> None:
        k = 0
        while time.monotonic() < deadline:
            k += 1
            started = time.perf_counter()
            reply = await engine.execute(c.Credit(f"EU-0-{n + 1:04x}", f"cr-{n}-{k}", 1))
            latencies.append(time.perf_counter() - started)
            assert reply.status < 300, reply.body

    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    return len(latencies), latencies


async def one_run(make: object, old_rows: int, seconds: float, prune: bool) -> str:
    storage, seeded = await make()  # type: ignore[operator]
    engine = ShardEngine(0, storage, sweep_interval_s=3600)
    await engine.start()
    feed = EventsFeed([source_of(storage)], (), retention_s=86_400)
    task = asyncio.create_task(feed.run_pruner()) if prune else None
    started = time.monotonic()
    try:
        ops, latencies = await load(engine, seconds)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pruned = await feed.sources[0].pruned()
        await feed.close()
        await engine.stop()
    took = time.monotonic() - started
    cut = statistics.quantiles(latencies, n=100)
    return (
        f"{'with the pruner' if prune else 'alone          '}: {ops / seconds:,.0f} ops/s, p50 {cut[49] * 1e3:.2f} ms,"
        f" p99 {cut[98] * 1e3:.2f} ms; {pruned:,} of {seeded:,} old rows pruned ({pruned / took:,.0f}/s)"
    )


async def main(argv: list[str]) -> None:
    mariadb = "--mariadb" in argv
    args = [a for a in argv if not a.startswith("--")]
    old_rows = int(args[0]) if args else 300_000
    seconds = float(args[1]) if len(args) > 1 else 8.0
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.db"
        if not mariadb:
            from balance.storage.sqlite import SqliteShardStorage

            first = SqliteShardStorage(template)
            await first.open()
            await first.close()
            seed_sqlite(template, old_rows)
        runs = 0

        async def make() -> tuple[ShardStorage, int]:
            nonlocal runs
            runs += 1
            if mariadb:
                from balance.storage.mariadb import from_url

                url = os.environ.get("BALANCE_TEST_DB_URL", "mysql://root@127.0.0.1:3306/")
                name = f"prune_cost_{uuid.uuid4().hex[:8]}"
                storage = from_url(url.rstrip("/") + f"/{name}", 0)
                await storage.open()
                await seed_mariadb(storage, old_rows)
                return storage, old_rows
            from balance.storage.sqlite import SqliteShardStorage

            path = Path(tmp) / f"run-{runs}.db"
            shutil.copy(template, path)
            return SqliteShardStorage(path), old_rows

        for prune in (False, True, False, True):
            print(await one_run(make, old_rows, seconds, prune), f"(load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
