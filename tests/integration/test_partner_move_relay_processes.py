"""A moved partner's events with the two shards' relays in two separate processes
(``balance-service relay`` with ``BALANCE_RELAY_SHARDS``), on the real RabbitMQ and NATS
JetStream: the new shard's relay knows of the old one only through the cursor that relay saves
in the old shard's database (opened read-only), and still publishes nothing of the subtree
until the old shard's events are published up to the leaving; its other accounts' events are
not held meanwhile. Each account's versions arrive in order, without a gap, each event once."""

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
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from two_shards import Build, account

from balance.domain import commands as c
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("BALANCE_TEST_NATS_URL", "nats://127.0.0.1:4222")
QUIET_S = 4.0  # nothing more arrived for this long: the relays running have published all they may

Event = tuple[int, dict[str, Any]]  # (the shard that published it, the event)


class Amqp:
    """A queue bound to every routing key of a fresh exchange; events in arrival order."""

    name = "amqp"

    async def open(self) -> None:
        self.connection = await aio_pika.connect(AMQP_URL, timeout=3)
        self.exchange = f"test-relays-{uuid.uuid4().hex[:8]}"
        self.channel = await self.connection.channel()
        declared = await self.channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self.queue = await self.channel.declare_queue(f"test-relays-{uuid.uuid4().hex[:8]}", exclusive=True)
        await self.queue.bind(declared, "#")
        self.events: list[Event] = []

    def env(self) -> dict[str, str]:
        return {"BALANCE_AMQP_URL": AMQP_URL, "BALANCE_AMQP_EXCHANGE": self.exchange}

    async def published(self) -> list[Event]:
        """Every event so far, once nothing came for ``QUIET_S``."""
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


class Nats:
    """A fresh stream; events in the stream's order (the order the server stored them in)."""

    name = "nats"

    async def open(self) -> None:
        self.nc = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
        self.stream = f"BALANCE_EVENTS_TEST_{uuid.uuid4().hex[:8].upper()}"
        self.prefix = f"test.{uuid.uuid4().hex[:8]}"

    def env(self) -> dict[str, str]:
        return {"BALANCE_NATS_URL": NATS_URL, "BALANCE_NATS_STREAM": self.stream,
                "BALANCE_NATS_SUBJECT_PREFIX": self.prefix}  # fmt: skip

    async def published(self) -> list[Event]:
        js, count, last = self.nc.jetstream(), -1, time.monotonic()
        while time.monotonic() - last < QUIET_S:
            try:
                now = (await js.stream_info(self.stream)).state.messages
            except nats.js.errors.NotFoundError:  # (the relay makes the stream)
                now = 0
            if now != count:
                count, last = now, time.monotonic()
            await asyncio.sleep(0.1)
        if count == 0:
            return []
        config = ConsumerConfig(ack_policy=AckPolicy.NONE)
        sub = await js.pull_subscribe(f"{self.prefix}.>", stream=self.stream, config=config)
        found: list[Event] = []
        while len(found) < count:
            for message in await sub.fetch(min(500, count - len(found)), timeout=5):
                shard = message.subject[len(self.prefix) + 1 :].split(".")[1]  # <prefix>.<region>.<shard>.<type>
                found.append((int(shard), json.loads(message.data)))
        await sub.unsubscribe()
        return found

    async def close(self) -> None:
        try:
            await self.nc.jetstream().delete_stream(self.stream)
        finally:
            await self.nc.close()


def relay_process(tmp_path: Path, broker: dict[str, str], shard: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BALANCE_DATA_DIR": str(tmp_path), "BALANCE_SHARDS": "2",
           "BALANCE_ADMIN_KEY": "adm_relay_test", "BALANCE_RELAY_SHARDS": str(shard), **broker}  # fmt: skip
    for other in ("BALANCE_DB_URL", "BALANCE_AMQP_URL", "BALANCE_NATS_URL"):
        if other not in broker:
            env.pop(other, None)
    with (tmp_path / f"relay-{shard}.log").open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "balance", "relay"], env=env, stdout=out, stderr=out)


@pytest.mark.parametrize("make", [Amqp, Nats], ids=["rabbitmq", "nats"])
async def test_the_old_shards_events_go_first_with_each_relay_in_its_own_process(
    tmp_path: Path, make: type[Amqp] | type[Nats]
) -> None:
    broker = make()
    try:
        await broker.open()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"{broker.name} not reachable: {exc!r}")
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
    subtree = {root, *kids}
    relays = [relay_process(tmp_path, broker.env(), 1)]  # the new shard's relay first, alone
    try:
        events = await broker.published()
        assert [e for _, e in events if e["account_id"] == other], "the new shard's relay published nothing"
        assert not [e for _, e in events if e["account_id"] in subtree], "the subtree's events came first"
        assert {shard for shard, _ in events} == {1}
        relays.append(relay_process(tmp_path, broker.env(), 0))
        events = await broker.published()
    finally:
        for proc in relays:
            proc.send_signal(signal.SIGTERM)
        for proc in relays:
            proc.wait(20)
        await broker.close()
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


@pytest.mark.parametrize("make", [Amqp, Nats], ids=["rabbitmq", "nats"])
async def test_a_partner_moved_there_and_back_with_each_relay_in_its_own_process(
    tmp_path: Path, make: type[Amqp] | type[Nats]
) -> None:
    """Moved to shard 1 and back to 0: each shard's relay waits for the other's cursor in turn
    (shard 1's for shard 0's up to the first leaving, shard 0's for shard 1's up to the second),
    so a relay held by an arrival still saves the cursor it confirmed (else both wait forever)."""
    broker = make()
    try:
        await broker.open()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"{broker.name} not reachable: {exc!r}")
    build = Build(lambda shard: SqliteShardStorage(tmp_path / f"shard-{shard}.db"))
    service = build()
    await service.start()
    root = await account(service, 0)
    kids = []
    for i in range(3):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        kids.append(json.loads(reply.body)["id"])
    for step, to_shard in enumerate((1, 0)):
        for kid in kids:
            assert (await service.execute(c.Credit(kid, f"cr{step}-{kid}", 100))).status == 201
        moved = await service.move_partner(root, to_shard, f"mv-{step}")
        assert moved["status"] == "done", moved
    for kid in kids:
        assert (await service.execute(c.Credit(kid, f"last-{kid}", 5))).status == 201
    final = {kid: service.engines[0].ledger.accounts[kid].version for kid in [root, *kids]}
    await service.stop()
    relays = [relay_process(tmp_path, broker.env(), shard) for shard in (0, 1)]
    try:
        events = await broker.published()
    finally:
        for proc in relays:
            proc.send_signal(signal.SIGTERM)
        for proc in relays:
            proc.wait(20)
        await broker.close()
    for kid in [root, *kids]:
        versions = [e["version"] for _, e in events if e["account_id"] == kid]
        assert sorted(set(versions)) == list(range(1, final[kid] + 1)), (kid, versions)  # all, no gap
        assert versions == sorted(versions), (kid, versions)  # in order
    for kid in kids:  # (the root itself changed only on shard 0)
        shards = [shard for shard, e in events if e["account_id"] == kid]
        assert shards[0] == 0 and 1 in shards and shards[-1] == 0, (kid, shards)
