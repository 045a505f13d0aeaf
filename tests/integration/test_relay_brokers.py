"""The relay against the real RabbitMQ and NATS JetStream of this machine (never a fake broker):
every committed change arrives, in order, once per event id, with gap-free account versions;
a broker that goes away mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.engine.recovery import Backoff
from balance.engine.shard import ShardEngine
from balance.events import catalogue as cat
from balance.metrics import Metrics
from balance.relay.amqp import AmqpSink
from balance.relay.nats import NatsSink
from balance.relay.relay import ShardRelay
from balance.relay.sources import SqliteEventSource, source_of
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("BALANCE_TEST_NATS_URL", "nats://127.0.0.1:4222")
ACCOUNTS = [f"EU-0-{n:04x}" for n in range(8)]


async def started(path: Path, clock: ManualClock | None = None) -> ShardEngine:
    clock = clock or ManualClock()
    engine = ShardEngine(0, SqliteShardStorage(path), clock=clock, sweep_interval_s=3600, on_fatal=lambda _: None)
    await engine.start()
    for account_id in ACCOUNTS:
        reply = await engine.execute(c.CreateAccount(account_id, None, "user", "EU", "EUR", account_id, 0, b"{}"))
        assert reply.status == 201
    return engine


async def business(engine: ShardEngine, rounds: int, tag: str) -> int:
    """Concurrent credits, transfers, holds and captures on a few accounts; how many were accepted."""
    commands: list[c.Command] = []
    for n in range(rounds):
        a, b = ACCOUNTS[n % len(ACCOUNTS)], ACCOUNTS[(n + 3) % len(ACCOUNTS)]
        commands += [
            c.Credit(a, f"{tag}-cr-{n}", 1_000),
            c.Transfer(f"{tag}-tr-{n}", a, b, 300, "EUR"),
            c.PlaceHold(b, f"{tag}-h-{n}", 200, 900),
        ]
    replies = await asyncio.gather(*(engine.execute(command) for command in commands))
    captures = [c.CaptureHold(ACCOUNTS[(n + 3) % len(ACCOUNTS)], f"{tag}-h-{n}", 150) for n in range(0, rounds, 2)]
    replies += await asyncio.gather(*(engine.execute(command) for command in captures))
    assert all(reply.status < 300 for reply in replies), [r.body for r in replies if r.status >= 300][:3]
    return len(replies)


def check_stream(events: list[dict[str, Any]], engine: ShardEngine) -> None:
    """De-duplicated by id: in seq order, and every account's versions 1..now without a gap."""
    unique = list({event["id"]: event for event in events}.values())
    seqs = [event["seq"] for event in unique]
    assert seqs == sorted(seqs)
    for account_id in ACCOUNTS:
        versions = sorted({e["version"] for e in unique if e["account_id"] == account_id})
        assert versions == list(range(1, engine.ledger.accounts[account_id].version + 1)), account_id


async def relay_until_caught_up(relay: ShardRelay, engine: ShardEngine, timeout_s: float = 60) -> None:
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + timeout_s
        while relay.cursor < engine.ledger.next_seq - 1:
            assert not task.done(), task
            assert time.monotonic() < deadline, f"relay at {relay.cursor}, shard at {engine.ledger.next_seq - 1}"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await relay.save()  # stopped first, as stop_relays does (the relay's own reads use the source)


# ---- RabbitMQ -----------------------------------------------------------------------------


@pytest.fixture
async def rabbit() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {exc!r}")
    channel = await connection.channel()
    yield channel
    await connection.close()


async def bound_queue(
    channel: aio_pika.abc.AbstractChannel, exchange: str, key: str = "#"
) -> aio_pika.abc.AbstractQueue:
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"test-events-{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(declared, key)
    return queue


async def drain(queue: aio_pika.abc.AbstractQueue, idle_s: float = 1.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    messages = []
    while True:
        message = await queue.get(no_ack=True, fail=False, timeout=idle_s)
        if message is None:
            return messages
        messages.append(message)


async def test_every_committed_change_arrives_on_rabbitmq_persistent_with_its_id(
    tmp_path: Path, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    queue = await bound_queue(rabbit, exchange)
    engine = await started(tmp_path / "shard-0.db")
    await business(engine, 60, "a")
    relay = ShardRelay(
        0, SqliteEventSource(tmp_path / "shard-0.db"), AmqpSink(AMQP_URL, exchange), Metrics(), page_rows=100
    )
    await relay_until_caught_up(relay, engine)
    messages = await drain(queue)
    events = [json.loads(m.body) for m in messages]
    assert len(events) == len({e["id"] for e in events}) > 0
    for message, event in zip(messages, events, strict=True):
        assert message.message_id == event["id"]
        assert message.routing_key == f"EU.0.{event['type']}"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json" and message.type == event["type"]
    check_stream(events, engine)
    assert await SqliteEventSource(tmp_path / "shard-0.db").cursor("amqp") == engine.ledger.next_seq - 1
    await relay.sink.close()
    await rabbit.exchange_delete(exchange)
    await engine.stop()


class CountingSource(SqliteEventSource):
    """The real SQLite source, counting its page reads (how often the relay wakes)."""

    reads = 0

    async def read_page(self, *args: Any) -> Any:
        self.reads += 1
        return await super().read_page(*args)


async def test_at_a_low_rate_the_relay_reads_once_per_idle_poll_and_publishes_everything(
    tmp_path: Path, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    queue = await bound_queue(rabbit, exchange)
    engine = await started(tmp_path / "shard-0.db")
    source = CountingSource(tmp_path / "shard-0.db")
    relay = ShardRelay(0, source, AmqpSink(AMQP_URL, exchange), Metrics(), idle_poll_s=0.1)
    task = asyncio.create_task(relay.run())
    began = time.monotonic()
    for n in range(40):  # one credit every 25 ms: a page short of full at every read
        reply = await engine.execute(c.Credit(ACCOUNTS[n % 8], f"slow-{n}", 10))
        assert reply.status == 201
        await asyncio.sleep(0.025)
    while relay.cursor < engine.ledger.next_seq - 1:
        assert time.monotonic() - began < 30
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - began
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert source.reads <= elapsed / 0.1 + 3, (source.reads, elapsed)  # not a read per commit, nor two per wake
    events = [json.loads(m.body) for m in await drain(queue)]
    credits = {e["data"]["transaction"]["operation_id"] for e in events if e["type"] == cat.TRANSACTION_CREATED}
    assert {f"slow-{n}" for n in range(40)} <= credits
    check_stream(events, engine)
    await relay.sink.close()
    await source.close()
    await rabbit.exchange_delete(exchange)
    await engine.stop()


async def test_the_default_exchange_is_durable_topic_balance_events(
    tmp_path: Path, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    queue = await bound_queue(rabbit, cat.AMQP_EXCHANGE, "EU.0.account.created")
    engine = await started(tmp_path / "shard-0.db")
    relay = ShardRelay(0, SqliteEventSource(tmp_path / "shard-0.db"), AmqpSink(AMQP_URL), Metrics())
    await relay_until_caught_up(relay, engine)
    ids = {json.loads(m.body)["account_id"] for m in await drain(queue)}
    assert set(ACCOUNTS) <= ids  # (other runs may publish to the shared exchange too)
    passive = await rabbit.get_exchange(cat.AMQP_EXCHANGE, ensure=True)  # exists (declared durable by the relay)
    assert passive.name == cat.AMQP_EXCHANGE
    await relay.sink.close()
    await engine.stop()


class Proxy:
    """A TCP proxy in front of the real RabbitMQ: cut it to make the broker away for the relay."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in list(self.pipes):
            pipe.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)


async def test_rabbitmq_away_mid_stream_loses_nothing_and_the_relay_catches_up(
    tmp_path: Path, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    queue = await bound_queue(rabbit, exchange)
    proxy = Proxy(("127.0.0.1", 5672))
    await proxy.start()
    url = AMQP_URL.replace(":5672", f":{proxy.port}")
    engine = await started(tmp_path / "shard-0.db")
    relay = ShardRelay(
        0, SqliteEventSource(tmp_path / "shard-0.db"), AmqpSink(url, exchange), Metrics(), page_rows=50,
        backoff=Backoff(0.05, 0.2),
    )  # fmt: skip
    task = asyncio.create_task(relay.run())
    await business(engine, 30, "before")
    await asyncio.sleep(0.3)
    await proxy.cut()  # the broker is away for the relay; the money path goes on
    began = time.monotonic()
    accepted = await business(engine, 40, "during")
    assert time.monotonic() - began < 5 and accepted > 0
    await asyncio.sleep(0.5)
    assert relay.failures > 0 and relay.cursor < engine.ledger.next_seq - 1
    await proxy.start()  # back (same port)
    try:
        deadline = time.monotonic() + 30
        while relay.cursor < engine.ledger.next_seq - 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    events = [json.loads(m.body) for m in await drain(queue)]
    check_stream(events, engine)
    operations = {e["data"]["transaction"]["operation_id"] for e in events if e["type"] == cat.TRANSACTION_CREATED}
    assert {f"during-cr-{n}" for n in range(40)} <= operations
    await relay.sink.close()
    await proxy.cut()
    await rabbit.exchange_delete(exchange)
    await engine.stop()


# ---- NATS JetStream -----------------------------------------------------------------------


async def stream_messages(url: str, stream: str, subjects: str) -> list[Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subjects, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    found = []
    while True:
        try:
            batch = await sub.fetch(500, timeout=1)
        except (TimeoutError, nats.errors.TimeoutError):
            break
        found += batch
    await nc.close()
    return found


async def test_every_committed_change_arrives_on_jetstream_with_its_msg_id(tmp_path: Path) -> None:
    try:
        probe = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"NATS not reachable at {NATS_URL}: {exc!r}")
    stream, prefix = f"BALANCE_EVENTS_TEST_{uuid.uuid4().hex[:8].upper()}", f"test.{uuid.uuid4().hex[:8]}"
    engine = await started(tmp_path / "shard-0.db")
    await business(engine, 60, "a")
    sink = NatsSink(NATS_URL, stream, prefix)
    relay = ShardRelay(0, SqliteEventSource(tmp_path / "shard-0.db"), sink, Metrics(), page_rows=100)
    await relay_until_caught_up(relay, engine)
    relay.cursor = 0  # publish everything again: the server drops repeats by Nats-Msg-Id
    await relay_until_caught_up(relay, engine)
    messages = await stream_messages(NATS_URL, stream, f"{prefix}.>")
    events = [json.loads(m.data) for m in messages]
    assert len(events) == len({e["id"] for e in events}) > 0  # no duplicate stored
    for message, event in zip(messages, events, strict=True):
        assert message.headers["Nats-Msg-Id"] == event["id"]
        assert message.subject == f"{prefix}.EU.0.{event['type']}"
    check_stream(events, engine)
    await sink.close()
    await probe.jetstream().delete_stream(stream)
    await probe.close()
    await engine.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A nats-server of the test's own (JetStream, its own store), started and killed by the test."""
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if binary is None:
        pytest.skip("no nats-server binary")
    port = free_port()
    store = tmp_path / "nats"
    state: dict[str, Any] = {"url": f"nats://127.0.0.1:{port}", "process": None}

    def start() -> None:
        state["process"] = subprocess.Popen(
            [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)

    def kill() -> None:
        process = state["process"]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    state["start"], state["kill"] = start, kill
    start()
    yield state
    kill()


async def test_nats_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path, private_nats: dict[str, Any]) -> None:
    url = private_nats["url"]
    engine = await started(tmp_path / "shard-0.db")
    relay = ShardRelay(
        0,
        SqliteEventSource(tmp_path / "shard-0.db"),
        NatsSink(url),
        Metrics(),
        page_rows=50,
        backoff=Backoff(0.05, 0.2),
    )
    task = asyncio.create_task(relay.run())
    await business(engine, 30, "before")
    await asyncio.sleep(0.5)
    private_nats["kill"]()  # SIGKILL: the broker is away mid-stream
    began = time.monotonic()
    await business(engine, 40, "during")
    assert time.monotonic() - began < 5  # the money path did not wait for the broker
    await asyncio.sleep(0.5)
    assert relay.failures > 0
    await asyncio.to_thread(private_nats["start"])
    try:
        deadline = time.monotonic() + 30
        while relay.cursor < engine.ledger.next_seq - 1:
            assert time.monotonic() < deadline, (relay.cursor, engine.ledger.next_seq)
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await relay.sink.close()
    events = [json.loads(m.data) for m in await stream_messages(url, cat.NATS_STREAM, "balance.events.>")]
    check_stream(events, engine)
    operations = {e["data"]["transaction"]["operation_id"] for e in events if e["type"] == cat.TRANSACTION_CREATED}
    assert {f"before-cr-{n}" for n in range(30)} | {f"during-cr-{n}" for n in range(40)} <= operations
    await engine.stop()


async def outbox_seqs(path: Path) -> list[int]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        db.close()


async def test_outbox_rows_go_only_once_every_broker_confirmed_them_and_retention_passed(
    tmp_path: Path, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    """Two sinks on one shard: the one that published cannot prune what the other (away) has
    not; once both confirmed, rows older than the retention go; journal rows never do."""
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    engine = await started(tmp_path / "shard-0.db", ManualClock(int(time.time() * 1e6)))  # 8 outbox rows
    await business(engine, 5, "a")
    path = tmp_path / "shard-0.db"
    metrics = Metrics()
    amqp = ShardRelay(0, SqliteEventSource(path), AmqpSink(AMQP_URL, exchange), metrics, retention_s=0)
    away = ShardRelay(0, SqliteEventSource(path), NatsSink("nats://127.0.0.1:1"), metrics, retention_s=0)
    amqp.peers = away.peers = [amqp, away]
    await relay_until_caught_up(amqp, engine)
    assert len(await outbox_seqs(path)) == len(ACCOUNTS)  # the other sink has published none of them
    away.saved = away.cursor = engine.ledger.next_seq - 1  # as if it had published them all
    before = await outbox_seqs(path)
    await amqp.save()
    # All gone but the newest outbox row (always kept: the next seq after a restart is the largest kept).
    assert await outbox_seqs(path) == [max(before)]
    journal_rows = await SqliteEventSource(path).max_seq()
    assert journal_rows == engine.ledger.next_seq - 1
    kept = ShardRelay(0, SqliteEventSource(path), AmqpSink(AMQP_URL, exchange), metrics, retention_s=3600)
    await ok_account(engine, "EU-0-ffff")
    await relay_until_caught_up(kept, engine)
    assert len(await outbox_seqs(path)) == 2  # confirmed, but younger than the retention (and the newest kept)
    for relay in (amqp, kept):
        await relay.sink.close()
    await rabbit.exchange_delete(exchange)
    await engine.stop()


async def ok_account(engine: ShardEngine, account_id: str) -> None:
    reply = await engine.execute(c.CreateAccount(account_id, None, "user", "EU", "EUR", account_id, 0, b"{}"))
    assert reply.status == 201


async def test_a_relay_on_each_backend_publishes_everything_and_keeps_its_cursor_there(
    backend: Any, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    """The same relay on each backend: its cursor is a row of the shard database's meta table,
    read back by a relay started afresh (which then publishes nothing again)."""
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    queue = await bound_queue(rabbit, exchange)
    engine = ShardEngine(0, backend.make(), clock=ManualClock(), sweep_interval_s=3600, on_fatal=lambda _: None)
    await engine.start()
    for account_id in ACCOUNTS:
        reply = await engine.execute(c.CreateAccount(account_id, None, "user", "EU", "EUR", account_id, 0, b"{}"))
        assert reply.status == 201
    await business(engine, 20, "m")
    first = ShardRelay(0, source_of(engine.storage), AmqpSink(AMQP_URL, exchange), Metrics(), page_rows=50)
    await relay_until_caught_up(first, engine)
    await first.sink.close()
    events = [json.loads(m.body) for m in await drain(queue)]
    check_stream(events, engine)
    again = ShardRelay(0, source_of(engine.storage), AmqpSink(AMQP_URL, exchange), Metrics())
    assert await again.source.cursor("amqp") == engine.ledger.next_seq - 1
    await relay_until_caught_up(again, engine)
    assert await drain(queue, idle_s=0.5) == []
    await again.sink.close()
    for relay in (first, again):
        await relay.source.close()
    await rabbit.exchange_delete(exchange)
    await engine.stop()
