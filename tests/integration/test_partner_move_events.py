"""A moved partner's events on the real RabbitMQ: the new shard's relay holds the subtree's
events back until the old shard's relay has published its own up to the move, so a consumer
gets each account's versions in order and without a gap, even when the old shard's relay
starts late."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from two_shards import Build, account

from balance.domain import commands as c
from balance.engine.partner_move import DONE, MoveRecord, run_move
from balance.metrics import Metrics
from balance.relay.amqp import AmqpSink
from balance.relay.relay import ShardRelay
from balance.relay.sources import source_of
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def test_the_old_shards_events_go_first_even_when_its_relay_starts_late(tmp_path: Path) -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {exc!r}")
    build = Build(lambda shard: SqliteShardStorage(tmp_path / f"shard-{shard}.db"))
    service = build()
    await service.start()
    root = await account(service, 0)
    kids = []
    for i in range(5):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        kids.append(json.loads(reply.body)["id"])
    for kid in kids:
        assert (await service.execute(c.Credit(kid, f"cr-{kid}", 100))).status == 201
        assert (await service.execute(c.PlaceHold(kid, f"h-{kid}", 10, 3_600))).status == 201
    record = await run_move(service.engines[0], service.engines[1], MoveRecord("mv-ev", root, 0, 1), lambda r: None)
    assert record.step == DONE
    service.placement.override([(kid, 1) for kid in [root, *kids]])
    for kid in kids:  # after the move, on shard 1
        assert (await service.execute(c.CaptureHold(kid, f"h-{kid}"))).status == 200
        assert (await service.execute(c.Credit(kid, f"cr2-{kid}", 5))).status == 201
    exchange = f"test-moves-{uuid.uuid4().hex[:8]}"
    channel = await connection.channel()
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"test-moves-{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(declared, "#")
    relays = [
        ShardRelay(shard, source_of(engine.storage.inner), AmqpSink(AMQP_URL, exchange), Metrics())
        for shard, engine in enumerate(service.engines)
    ]
    relays[0].others, relays[1].others = {1: relays[1]}, {0: relays[0]}
    tasks = [asyncio.create_task(relays[1].run())]  # the new shard's relay first
    await asyncio.sleep(1.0)
    tasks.append(asyncio.create_task(relays[0].run()))
    try:
        for relay, engine in zip(relays, service.engines, strict=True):
            for _ in range(600):
                if relay.cursor >= engine.ledger.next_seq - 1:
                    break
                await asyncio.sleep(0.05)
            assert relay.cursor >= engine.ledger.next_seq - 1, (relay.shard, relay.cursor)
        events: list[dict[str, Any]] = []
        while True:
            message = await queue.get(no_ack=True, fail=False, timeout=3.0)
            if message is None:
                break
            events.append(json.loads(message.body))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for relay in relays:
            await relay.sink.close()
        await channel.exchange_delete(exchange)
        await connection.close()
    for kid in [root, *kids]:
        versions = [e["version"] for e in events if e["account_id"] == kid]
        now = service.engines[1].ledger.accounts[kid].version
        assert sorted(set(versions)) == list(range(1, now + 1)), (kid, versions)
        assert versions == sorted(versions), (kid, versions)
    await service.stop()
