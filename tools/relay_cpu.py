"""The relay's CPU per event (and RabbitMQ's), in process, on a shard written by the real engine.

    .venv/bin/python tools/relay_cpu.py [OPS] [--runs 3] [--queue] [--profile] [--mariadb] [--page-rows N] [--inline]

Writes OPS operations (default 50,000: ``hold`` + ``capture`` pairs over 100 accounts, through
``ShardEngine`` into a SQLite shard in a temporary directory, or a fresh MariaDB database with
``--mariadb``), then relays every event of it ``--runs`` times (each run from cursor 0 to a
fresh durable topic exchange on the local RabbitMQ; ``--queue``: a durable queue bound, so
that RabbitMQ persists every event). Each run prints the events, the events per second, this
process's CPU per event published and confirmed (``time.process_time``: every thread, the
SQLite reader's included) and RabbitMQ's (``beam.smp``, from /proc); then the medians, and
the reading and the building of the envelopes alone (no broker).
``--profile`` adds one more run under cProfile and prints its top functions (own time).
``--page-rows N``: pages of N rows (default 1,000; a relay that keeps up with a single-operation
load reads pages of 100-300 rows, one per ``BALANCE_RELAY_POLL_MS``); ``--inline``: SQLite read
in the loop's thread, as the relay process does (default: a thread of its own, as the feed).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika

from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.events.stream import EventStream
from balance.metrics import Metrics
from balance.relay.amqp import AmqpSink
from balance.relay.page import EventSource
from balance.relay.relay import ShardRelay
from balance.relay.sources import MariaDbEventSource, SqliteEventSource
from balance.storage.base import ShardStorage

AMQP_URL = os.environ.get("BALANCE_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
MARIADB = dict(host="127.0.0.1", port=3306, user="root", password="")


def cpu_of(name: str) -> float:
    """CPU seconds of the (first) process called ``name``, from /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() != name:
                        continue
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
    return 0.0


async def fill(storage: ShardStorage, ops: int) -> None:
    engine = ShardEngine(0, storage, clock=ManualClock(), sweep_interval_s=3600)
    await engine.start()
    accounts = [f"EU-0-{i:04x}" for i in range(100)]
    for account in accounts:
        await engine.execute(c.CreateAccount(account, None, "user", "EU", "EUR", account, 0, b"{}"))
        await engine.execute(c.Credit(account, "seed", 10**9))
    holds = ops // 2
    for start in range(0, holds, 2000):
        ids = range(start, min(holds, start + 2000))
        await asyncio.gather(*(engine.execute(c.PlaceHold(accounts[i % 100], f"h{i}", 10, 900)) for i in ids))
        await asyncio.gather(*(engine.execute(c.CaptureHold(accounts[i % 100], f"h{i}", None)) for i in ids))
    await engine.stop()


PAGE_ROWS = 1000  # (--page-rows)
INLINE = False  # (--inline)


async def one_run(
    source: EventSource, last: int, queue: bool, profile: cProfile.Profile | None
) -> tuple[float, float, float, int]:
    """(relay µs/event, RabbitMQ µs/event, events/s, events) of one relay from cursor 0 to ``last``."""
    exchange_name = f"bench.relaycpu.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
    bound = None
    if queue:
        bound = await channel.declare_queue(exchange_name, durable=True)
        await bound.bind(exchange, "#")
    metrics = Metrics()
    sink = AmqpSink(AMQP_URL, exchange_name)
    relay = ShardRelay(0, source, sink, metrics, cursor_save_s=3600.0, page_rows=PAGE_ROWS)
    await sink._connect()  # connected before the clock starts (as a long-running relay is)
    cpu0, broker0, began = time.process_time(), cpu_of("beam.smp"), time.perf_counter()
    if profile is not None:
        profile.enable()
    task = asyncio.create_task(relay.run())
    while relay.cursor < last:
        await asyncio.sleep(0.005)
    if profile is not None:
        profile.disable()
    seconds, cpu, broker = time.perf_counter() - began, time.process_time() - cpu0, cpu_of("beam.smp") - broker0
    relay.stopping = True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    events = int(metrics.events_published.labels("0", "amqp")._value.get())
    await sink.close()
    if bound is not None:
        await bound.delete(if_unused=False, if_empty=False)
    await exchange.delete()
    await connection.close()
    return cpu / events * 1e6, broker / events * 1e6, events / seconds, events


async def main(ops: int, runs: int, queue: bool, profile: bool, mariadb: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        database = f"relaycpu_{uuid.uuid4().hex[:8]}"
        source: EventSource
        if mariadb:
            import asyncmy

            from balance.storage.mariadb import MariaDbShardStorage

            admin = await asyncmy.connect(**MARIADB, autocommit=True)
            async with admin.cursor() as cur:
                await cur.execute(f"CREATE DATABASE {database}")
            storage: ShardStorage = MariaDbShardStorage(database=database, **MARIADB)  # type: ignore[arg-type]
        else:
            from balance.storage.sqlite import SqliteShardStorage

            storage = SqliteShardStorage(Path(work) / "shard-0.db")
        began = time.perf_counter()
        await fill(storage, ops)
        print(f"{ops:,} operations written in {time.perf_counter() - began:.1f}s", flush=True)

        def new_source() -> EventSource:
            """A source of its own for each run (a run's end cancels its relay, mid-read perhaps)."""
            if mariadb:
                return MariaDbEventSource(database=database, **MARIADB)  # type: ignore[arg-type]
            return SqliteEventSource(Path(work) / "shard-0.db", inline=INLINE)

        try:
            source = new_source()
            last = await source.max_seq()  # type: ignore[attr-defined]
            await source.close()
            side = "durable queue" if queue else "exchange only"
            results = []
            for run in range(runs):
                source = new_source()
                relay_us, broker_us, rate, events = await one_run(source, last, queue, None)
                await source.close()
                results.append((relay_us, broker_us, rate))
                print(
                    f"run {run + 1} ({side}): {events:,} events, {rate:,.0f}/s; relay CPU {relay_us:.1f} µs/event,"
                    f" RabbitMQ {broker_us:.1f} µs/event (load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            print(
                f"median of {runs}: relay {statistics.median(r[0] for r in results):.1f} µs/event,"
                f" RabbitMQ {statistics.median(r[1] for r in results):.1f} µs/event,"
                f" {statistics.median(r[2] for r in results):,.0f} events/s"
            )
            source = new_source()
            read, build, count, after, stream = 0.0, 0.0, 0, 0, EventStream(0)
            while True:  # the relay's two first steps alone, without a broker
                t0 = time.process_time()
                page = await source.read_page(after, 1000, stream.missing)
                t1 = time.process_time()
                if not page.journal and not page.outbox:
                    break
                count += len(
                    stream.build(page.journal, page.outbox, page.accounts, page.later_updates, page.placements)
                )
                build += time.process_time() - t1
                read += t1 - t0
                after = page.last_seq
            print(
                f"alone: reading the pages {read / count * 1e6:.1f} µs/event, building the envelopes {build / count * 1e6:.1f} µs/event"
            )
            if profile:
                profiler = cProfile.Profile()
                await source.close()
                source = new_source()
                await one_run(source, last, queue, profiler)
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
                print(out.getvalue())
            await source.close()
        finally:
            if mariadb:
                async with admin.cursor() as cur:
                    await cur.execute(f"DROP DATABASE IF EXISTS {database}")
                admin.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    runs = 3
    if "--runs" in args:
        at = args.index("--runs")
        runs = int(args[at + 1])
        del args[at : at + 2]
    if "--page-rows" in args:
        at = args.index("--page-rows")
        PAGE_ROWS = int(args[at + 1])
        del args[at : at + 2]
    INLINE = "--inline" in args
    numbers = [a for a in args if not a.startswith("--")]
    if len(numbers) > 1:
        raise SystemExit(__doc__)
    import uvloop

    uvloop.run(
        main(int(numbers[0]) if numbers else 50_000, runs, "--queue" in args, "--profile" in args, "--mariadb" in args)
    )
