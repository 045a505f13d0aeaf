"""A fleet node's relays (``relay.node_relay``) follow its ports' engines, on the real RabbitMQ.

Two shards as two nodes would hold them (each node's ``NodeRelay`` over its own ``NodeShard``
ports, real engines over real SQLite shard files or MariaDB databases), with a partner moved from shard 0 to
shard 1. Node b owns shard 1 only: it publishes shard 1's own accounts' events but holds the
moved subtree's until shard 0's relay (node a's) has saved its cursor past the leaving in shard
0's database; then the subtree's events follow, the old shard's first. Node a loses shard 0:
its relays stop at its next look without saving the cursor, and a change committed after that
is published by no one until node b owns shard 0, whose relay resumes at the saved cursor. A
relay task that ends by itself is started again.
Each account's versions arrive without a gap (de-duplicated by id)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from two_shards import Build, account

from balance.directory.records import ShardRecord
from balance.domain import commands as c
from balance.engine.clock import system_clock
from balance.engine.recovery import Backoff
from balance.engine.shard import ShardEngine
from balance.metrics import Metrics
from balance.node.ports import NodeShard
from balance.relay.config import RelayConfig
from balance.relay.node_relay import NodeRelay, cursor_reader
from balance.storage.base import ShardStorage
from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUIET_S = 3.0  # nothing more arrived for this long: the relays running have published all they may


class Queue:
    """A queue bound to every routing key of a fresh exchange; (shard, event) in arrival order."""

    async def open(self) -> None:
        self.connection = await aio_pika.connect(AMQP_URL, timeout=3)
        self.exchange = f"test-node-relay-{uuid.uuid4().hex[:8]}"
        self.channel = await self.connection.channel()
        declared = await self.channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self.queue = await self.channel.declare_queue(f"test-node-relay-{uuid.uuid4().hex[:8]}", exclusive=True)
        await self.queue.bind(declared, "#")
        self.events: list[tuple[int, dict[str, Any]]] = []

    async def published(self) -> list[tuple[int, dict[str, Any]]]:
        last = time.monotonic()
        while time.monotonic() - last < QUIET_S:
            message = await self.queue.get(no_ack=True, fail=False, timeout=3)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            self.events.append((int(str(message.routing_key).split(".")[1]), json.loads(message.body)))
            last = time.monotonic()
        return list(self.events)

    async def close(self) -> None:
        await self.channel.exchange_delete(self.exchange)
        await self.connection.close()


def database_url(storage: ShardStorage) -> str:
    """The shard's database as the directory would name it."""
    if isinstance(storage, SqliteShardStorage):
        return str(storage.path)
    assert isinstance(storage, MariaDbShardStorage)
    user = f"{quote(storage.user)}:{quote(storage.password)}" if storage.password else quote(storage.user)
    return f"mysql://{user}@{storage.host}:{storage.port}/{storage.database}"


async def saved_cursor(url: str) -> int:
    reader = cursor_reader(url)
    try:
        return await reader.cursor("amqp")
    finally:
        await reader.close()


def port(shard: int, engine: ShardEngine | None = None) -> NodeShard:
    found = NodeShard(shard, system_clock, Backoff())
    if engine is not None:
        found.own(engine)
    return found


async def engine_over(shard: int, backend: Any) -> ShardEngine:
    engine = ShardEngine(shard, backend.new(shard))
    await engine.start()
    return engine


async def test_a_nodes_relays_follow_its_shards_and_wait_for_the_old_shards_cursor(backend: Any) -> None:
    broker = Queue()
    try:
        await broker.open()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable: {exc!r}")
    urls = [database_url(backend.make(shard)) for shard in (0, 1)]  # (made: dropped after the test)
    build = Build(backend.new)
    service = build()
    await service.start()
    root = await account(service, 0)
    other = await account(service, 1)  # on the new shard all along: its events are not held
    lone = await account(service, 0)  # stays on shard 0
    kids = []
    for i in range(4):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        kids.append(json.loads(reply.body)["id"])
    for kid in kids:
        assert (await service.execute(c.Credit(kid, f"cr-{kid}", 100))).status == 201
    assert (await service.execute(c.Credit(other, "other-1", 100))).status == 201
    moved = await service.move_partner(root, 1, "mv-node-relay")
    assert moved["status"] == "done", moved
    for kid in kids:
        assert (await service.execute(c.Credit(kid, f"cr2-{kid}", 5))).status == 201
    await service.stop()
    subtree = {root, *kids}

    records = [ShardRecord(s, "EU", urls[s], "a" if s == 0 else "b", None) for s in (0, 1)]
    config = RelayConfig(amqp_url=AMQP_URL, amqp_exchange=broker.exchange)
    engines = [await engine_over(0, backend), await engine_over(1, backend)]
    ports_a, ports_b = [port(0, engines[0]), port(1)], [port(0), port(1, engines[1])]
    node_b = NodeRelay(ports_b, records, config, Metrics())
    node_a = NodeRelay(ports_a, records, config, Metrics())
    try:
        node_b.refresh()
        assert set(node_b.running) == {1}
        events = await broker.published()
        assert [e for _, e in events if e["account_id"] == other], "node b published nothing of shard 1"
        assert not [e for _, e in events if e["account_id"] in subtree], "the subtree's events came first"

        node_a.refresh()  # shard 0's relay, on another node: b learns its progress from shard 0's database
        assert set(node_a.running) == {0}
        events = await broker.published()
        for kid in kids:
            shards = [shard for shard, e in events if e["account_id"] == kid]
            assert shards and shards == sorted(shards) and shards[0] == 0 and shards[-1] == 1, (kid, shards)

        # Node a loses shard 0: its relays stop at its next look, the cursor left as it was saved.
        exposed = node_a.metrics.registry.get_sample_value
        assert exposed("balance_events_published_seq", {"shard": "0", "sink": "amqp"})
        ports_a[0].disown()
        node_a.refresh()
        assert not node_a.running
        assert exposed("balance_events_published_seq", {"shard": "0", "sink": "amqp"}) is None  # b's to show
        await asyncio.gather(*node_a._closing)
        cursor = await saved_cursor(urls[0])
        await engines[0].stop()
        engines[0] = await engine_over(0, backend)  # the next owner's engine
        assert (await engines[0].execute(c.Credit(lone, "lone-1", 9))).status == 201  # its version 2
        events = await broker.published()
        assert [e["version"] for _, e in events if e["account_id"] == lone] == [1], "a lost shard's relay published"
        assert await saved_cursor(urls[0]) == cursor

        ports_b[0].own(engines[0])
        node_b.refresh()
        assert set(node_b.running) == {0, 1}
        events = await broker.published()
        assert 2 in [e["version"] for _, e in events if e["account_id"] == lone], "shard 0 not resumed by b"

        # A relay that ends by itself (a bug; here cancelled from outside) is started again.
        ended = node_b.running[0]
        ended.tasks[0].cancel()
        deadline = asyncio.get_running_loop().time() + 10  # a cancelled MariaDB read drops its connection first
        while node_b.running.get(0) in (None, ended):
            assert asyncio.get_running_loop().time() < deadline, "the ended relay was not started again"
            await asyncio.sleep(0.05)
            node_b.refresh()
        assert node_b.running[0] is not ended
        assert (await engines[0].execute(c.Credit(lone, "lone-2", 9))).status == 201  # its version 3
        events = await broker.published()
        assert 3 in [e["version"] for _, e in events if e["account_id"] == lone], "shard 0's relay not restarted"
    finally:
        await node_a.stop()
        await node_b.stop()
        for engine in engines:
            await engine.stop()
        await broker.close()
    unique = {e["id"]: e for _, e in events}
    for acc in [root, *kids, other, lone]:
        versions = sorted({e["version"] for e in unique.values() if e["account_id"] == acc})
        assert versions == list(range(1, max(versions) + 1)), (acc, versions)
