"""The relay's CPU per event, and the broker's, on a shard of hold + capture pairs.

    .venv/bin/python tools/events_relay_cost.py 20000 [--queue]

Builds a SQLite shard in a temporary directory (100 accounts, N holds each captured: 4N
events), then relays it, in this process, to a fresh durable topic exchange on the local
RabbitMQ (``--queue``: with a durable queue bound, so that every event is persisted). Prints
the events per second, the process's CPU per event (reading, building and publishing) and
RabbitMQ's (``beam.smp``), then the reading and building alone.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
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
from balance.relay.relay import ShardRelay
from balance.relay.sources import SqliteEventSource
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"


def cpu_of(name: str) -> float:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if open(f"/proc/{entry}/comm").read().strip() == name:
                    fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
    return 0.0


async def shard(path: Path, holds: int) -> None:
    engine = ShardEngine(0, SqliteShardStorage(path), clock=ManualClock(), sweep_interval_s=3600)
    await engine.start()
    accounts = [f"EU-0-{i:04x}" for i in range(100)]
    for account in accounts:
        await engine.execute(c.CreateAccount(account, None, "user", "EU", "EUR", account, 0, b"{}"))
        await engine.execute(c.Credit(account, "seed", 10**9))
    for start in range(0, holds, 2000):
        ids = range(start, min(holds, start + 2000))
        await asyncio.gather(*(engine.execute(c.PlaceHold(accounts[i % 100], f"h{i}", 10, 900)) for i in ids))
        await asyncio.gather(*(engine.execute(c.CaptureHold(accounts[i % 100], f"h{i}", None)) for i in ids))
    await engine.stop()


async def main(holds: int, queue: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "shard-0.db"
        await shard(path, holds)
        last = sqlite3.connect(path).execute("SELECT MAX(seq) FROM journal").fetchone()[0]
        exchange_name = f"bench.events.{uuid.uuid4().hex[:6]}"
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        bound = None
        if queue:
            bound = await channel.declare_queue(exchange_name, durable=True)
            await bound.bind(exchange, "#")
        metrics = Metrics()
        relay = ShardRelay(0, SqliteEventSource(path), AmqpSink(AMQP_URL, exchange_name), metrics)
        cpu0, broker0, began = time.process_time(), cpu_of("beam.smp"), time.perf_counter()
        task = asyncio.create_task(relay.run())
        while relay.cursor < last:
            await asyncio.sleep(0.01)
        seconds, cpu, broker = time.perf_counter() - began, time.process_time() - cpu0, cpu_of("beam.smp") - broker0
        relay.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        events = metrics.events_published.labels("0", "amqp")._value.get()
        print(
            f"{'durable queue' if queue else 'exchange only'}: {events:,.0f} events in {seconds:.1f}s"
            f" ({events / seconds:,.0f}/s); relay CPU {cpu / events * 1e6:.1f} µs/event,"
            f" RabbitMQ {broker / events * 1e6:.1f} µs/event"
        )
        await relay.sink.close()
        if bound is not None:
            await bound.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()
        source, stream, after = SqliteEventSource(path), EventStream(0), 0
        read = build = 0.0
        count = 0
        while True:
            t0 = time.process_time()
            page = await source.read_page(after, 1000, stream.missing)
            t1 = time.process_time()
            if not page.journal and not page.outbox:
                break
            count += len(stream.build(page.journal, page.outbox, page.accounts, page.later_updates, page.placements))
            build += time.process_time() - t1
            read += t1 - t0
            after = page.last_seq
        await source.close()
        print(f"alone: reading {read / count * 1e6:.1f} µs/event, building {build / count * 1e6:.1f} µs/event")


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(numbers) != 1:
        raise SystemExit(__doc__)
    import uvloop

    uvloop.run(main(int(numbers[0]), "--queue" in sys.argv))
