"""A moved partner's events with the two shards' relays in two separate processes
(``balance-service relay`` with ``BALANCE_RELAY_SHARDS``), on the real RabbitMQ: the new shard's
relay knows of the old one only through the cursor that relay saves in the old shard's
database, and still publishes nothing of the subtree until the old shard's events are published
up to the leaving; its other accounts' events are not held meanwhile. Each account's versions
arrive in order, without a gap."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from two_shards import Build, account

from balance.domain import commands as c
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def relay_process(tmp_path: Path, exchange: str, shard: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "BALANCE_DATA_DIR": str(tmp_path), "BALANCE_SHARDS": "2", "BALANCE_ADMIN_KEY": "adm_relay_test",
        "BALANCE_AMQP_URL": AMQP_URL, "BALANCE_AMQP_EXCHANGE": exchange, "BALANCE_RELAY_SHARDS": str(shard),
    }  # fmt: skip
    env.pop("BALANCE_DB_URL", None)
    env.pop("BALANCE_NATS_URL", None)
    with (tmp_path / f"relay-{shard}.log").open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "balance", "relay"], env=env, stdout=out, stderr=out)


async def drain(queue: aio_pika.abc.AbstractQueue, events: list[tuple[int, dict[str, Any]]], quiet_s: float) -> None:
    """(shard, event) of every message until none came for ``quiet_s``."""
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        message = await queue.get(no_ack=True, fail=False, timeout=3)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        events.append((int(str(message.routing_key).split(".")[1]), json.loads(message.body)))
        last = time.monotonic()


async def test_the_old_shards_events_go_first_with_each_relay_in_its_own_process(tmp_path: Path) -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {exc!r}")
    build = Build(lambda shard: SqliteShardStorage(tmp_path / f"shard-{shard}.db"))
    service = build()
    await service.start()
    root = await account(service, 0)
    other = await account(service, 1)  # lives on the new shard all along: its events are not held
    kids = []
    for i in range(5):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        kids.append(json.loads(reply.body)["id"])
    for kid in kids:
        assert (await service.execute(c.Credit(kid, f"cr-{kid}", 100))).status == 201
        assert (await service.execute(c.PlaceHold(kid, f"h-{kid}", 10, 3_600))).status == 201
    assert (await service.execute(c.Credit(other, "other-1", 100))).status == 201
    moved = await service.move_partner(root, 1, "mv-relays")
    assert moved["status"] == "done", moved
    for kid in kids:  # after the move, on shard 1
        assert (await service.execute(c.CaptureHold(kid, f"h-{kid}"))).status == 200
        assert (await service.execute(c.Credit(kid, f"cr2-{kid}", 5))).status == 201
    assert (await service.execute(c.Credit(other, "other-2", 100))).status == 201
    final = {kid: service.engines[1].ledger.accounts[kid].version for kid in [root, *kids, other]}
    await service.stop()
    exchange = f"test-relays-{uuid.uuid4().hex[:8]}"
    channel = await connection.channel()
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"test-relays-{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(declared, "#")
    events: list[tuple[int, dict[str, Any]]] = []
    relays = [relay_process(tmp_path, exchange, 1)]  # the new shard's relay first, alone
    try:
        await drain(queue, events, quiet_s=4.0)
        subtree = {root, *kids}
        assert [e for _, e in events if e["account_id"] == other], "the new shard's relay published nothing"
        assert not [e for _, e in events if e["account_id"] in subtree], "the subtree's events came first"
        assert {shard for shard, _ in events} == {1}
        relays.append(relay_process(tmp_path, exchange, 0))
        await drain(queue, events, quiet_s=4.0)
    finally:
        for proc in relays:
            proc.send_signal(signal.SIGTERM)
        for proc in relays:
            proc.wait(20)
        await channel.exchange_delete(exchange)
        await connection.close()
    for relay in (0, 1):
        assert f"relaying shard(s) [{relay}]" in (tmp_path / f"relay-{relay}.log").read_text()
    for kid in [root, *kids, other]:
        versions = [e["version"] for _, e in events if e["account_id"] == kid]
        assert sorted(set(versions)) == list(range(1, final[kid] + 1)), (kid, versions)  # no gap
        assert versions == sorted(versions), (kid, versions)  # in order (one row may give two events)
    for kid in kids:
        shards = [shard for shard, e in events if e["account_id"] == kid]
        assert shards == sorted(shards) and shards[0] == 0 and shards[-1] == 1, (kid, shards)
    ids = [e["id"] for _, e in events]
    assert len(ids) == len(set(ids))  # each published once (no relay restarted)
    last_old = max(i for i, (shard, e) in enumerate(events) if shard == 0 and e["account_id"] in subtree)
    first_new = min(i for i, (shard, e) in enumerate(events) if shard == 1 and e["account_id"] in subtree)
    assert last_old < first_new
