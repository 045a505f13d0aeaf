"""A fleet's events through the real RabbitMQ: each node relays the shards it owns
(``relay.node_relay``), following its leases.

Two real nodes over SQLite shard files not named ``shard-<n>.db`` (node a owns shard 0, its
standby b; node b owns shard 1), a broker set on both. Money moves on both shards (through
both nodes, a transfer across them): every change arrives on a queue bound to the exchange, and
after de-duplication by id each account's versions run 1..its version as the API shows it, with
every acknowledged operation's ``transaction.created``; node a published shard 0's events only,
b shard 1's. Then credits flow to shard 0 through node b while node a is SIGKILLed: b takes
shard 0 over and its relay resumes at the cursor a saved in the shard's database: nothing
acknowledged is missing, each shard's events come in ``seq`` order (a repeat after the takeover
aside), and b now publishes shard 0's events. The books balance over the fleet."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from fleet_nodes import Fleet, fleet_books, new_account

from balance import cli

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def exchange() -> Iterator[str]:
    name = f"e2e.fleet-events.{uuid.uuid4().hex[:10]}"
    asyncio.run(_declare(name))
    yield name
    asyncio.run(_delete(name))


async def _declare(name: str) -> None:
    """The exchange and a queue bound to all of it, before any event (an exchange keeps nothing)."""
    connection = await aio_pika.connect(AMQP_URL, timeout=3)
    channel = await connection.channel()
    ex = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(ex, "#")
    await connection.close()


async def _delete(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=3)
    channel = await connection.channel()
    await channel.queue_delete(name)
    await channel.exchange_delete(name)
    await connection.close()


class Events:
    """What arrived on the queue, in order: (routing key, envelope)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.got: list[tuple[str, dict[str, Any]]] = []

    def drain(self) -> None:
        asyncio.run(self._drain())

    async def _drain(self) -> None:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
        channel = await connection.channel()
        queue = await channel.get_queue(self.queue)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            envelope = json.loads(message.body)
            assert message.message_id == envelope["id"]
            self.got.append((str(message.routing_key), envelope))
        await connection.close()

    def unique(self) -> dict[str, dict[str, Any]]:
        return {envelope["id"]: envelope for _, envelope in self.got}

    def versions(self, account: str) -> list[int]:
        return sorted({e["version"] for e in self.unique().values() if e["account_id"] == account})

    def operations(self) -> set[str]:
        return {
            str(e["data"]["transaction"]["operation_id"])
            for e in self.unique().values()
            if e["type"] == "transaction.created"
        }


def until(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def money(client: httpx.Client, shard: int, tag: str, done: list[str]) -> str:
    """An account on ``shard`` and money through it (``done``: the acknowledged operations)."""
    account = new_account(client, shard)
    r = client.post(f"/v1/accounts/{account}/credits", json={"id": f"cr-{tag}", "amount": 1000})
    assert r.status_code == 201, r.text
    done.append(f"cr-{tag}")
    for n in range(3):  # the third exhausts the account, the release replenishes it
        r = client.post(f"/v1/accounts/{account}/holds", json={"id": f"h-{tag}-{n}", "amount": 400 if n < 2 else 200})
        assert r.status_code == 201, r.text
    assert client.post(f"/v1/accounts/{account}/holds/h-{tag}-0/capture", json={"amount": 150}).status_code == 200
    assert client.post(f"/v1/accounts/{account}/holds/h-{tag}-2/release", json={}).status_code == 200
    assert client.patch(f"/v1/accounts/{account}", json={"name": f"renamed-{tag}"}).status_code == 200
    return account


def complete(events: Events, client: httpx.Client, accounts: list[str]) -> bool:
    """Every account's events, versions 1..its version now (de-duplicated by id)."""
    events.drain()
    for account in accounts:
        version = int(client.get(f"/v1/accounts/{account}").json()["version"])
        if events.versions(account) != list(range(1, version + 1)):
            return False
    return True


def broker_fleet(tmp_path: Path, exchange: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Fleet, list[Path]]:
    """Shard 0 on node a (standby b), shard 1 on node b, in files not named ``shard-<n>.db``;
    RabbitMQ set on both nodes (results and expiry notices off: events only)."""
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    files = [tmp_path / f"fleet-events-{shard}.sqlite" for shard in (0, 1)]
    assert cli.main(["shards", "add", "0", "--database", str(files[0]), "--node", "a", "--standby", "b"]) == 0
    assert cli.main(["shards", "add", "1", "--database", str(files[1]), "--node", "b"]) == 0
    fleet = Fleet(tmp_path)
    for env in fleet.envs.values():
        env.update(BALANCE_AMQP_URL=AMQP_URL, BALANCE_AMQP_EXCHANGE=exchange, BALANCE_RESULTS="off",
                   BALANCE_EXPIRY_JOB="off")  # fmt: skip
        for name in ("BALANCE_NATS_URL", "BALANCE_RELAY", "BALANCE_RELAY_SHARDS", "BALANCE_SHARDS", "BALANCE_DB_URL"):
            env.pop(name, None)
    return fleet, files


def test_each_node_relays_the_shards_it_owns_and_a_standby_resumes_at_the_cursor(
    tmp_path: Path, exchange: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, files = broker_fleet(tmp_path, exchange, monkeypatch)
    events = Events(exchange)
    done: list[str] = []
    try:
        fleet.start("a")
        fleet.start("b")
        with fleet.client("a") as a, fleet.client("b") as b:
            accounts = [money(a, 0, "a0", done), money(b, 0, "b0", done), money(a, 1, "a1", done)]
            accounts.append(money(b, 1, "b1", done))
            transfer = {"id": "t1", "from_account_id": accounts[0], "to_account_id": accounts[2], "amount": 50,
                        "currency": "USD"}  # fmt: skip
            assert a.post("/v1/transfers", json=transfer).status_code == 201
            done.append("t1")
            until(lambda: complete(events, a, accounts), "every account's events")
            assert set(done) <= events.operations()
            shards = {int(e["shard"]) for e in events.unique().values()}
            assert shards == {0, 1}
            for key, envelope in events.got:  # routing key <region>.<shard>.<type>
                assert key == f"{envelope['region']}.{envelope['shard']}.{envelope['type']}"
            # Each node published its own shard's events, and only those.
            assert metric(a, "balance_events_published_total", shard="0", sink="amqp") > 0
            assert metric(a, "balance_events_published_total", shard="1") == 0
            assert metric(b, "balance_events_published_total", shard="1", sink="amqp") > 0
            assert metric(b, "balance_events_published_total", shard="0") == 0

            # Credits to shard 0 through node b (forwarded to a, then served by b) while a is SIGKILLed.
            target = accounts[1]
            acknowledged: list[str] = []
            stop = threading.Event()

            def credits() -> None:
                with fleet.client("b") as c:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        try:
                            r = c.post(f"/v1/accounts/{target}/credits", json={"id": f"k-{n}", "amount": 1}, timeout=5)
                        except httpx.TransportError:
                            continue
                        if r.status_code == 201:
                            acknowledged.append(f"k-{n}")
                        else:
                            time.sleep(0.05)

            loader = threading.Thread(target=credits)
            loader.start()
            try:
                until(lambda: len(acknowledged) >= 50, "credits through a")
                fleet.kill("a")
                before = len(acknowledged)
                until(lambda: len(acknowledged) >= before + 50, "credits through b after its takeover", 60)
            finally:
                stop.set()
                loader.join(30)
            accounts_now = [*accounts, target]
            until(lambda: complete(events, b, accounts_now), "every account's events after the takeover")
            assert set(acknowledged) <= events.operations()
            assert metric(b, "balance_events_published_total", shard="0", sink="amqp") > 0  # b relays shard 0 now
            # In order per shard: each event's first arrival comes after those of lower seq.
            first: dict[str, int] = {}
            for index, (_, envelope) in enumerate(events.got):
                first.setdefault(envelope["id"], index)
            for shard in (0, 1):
                ordered = sorted((e["seq"], first[i]) for i, e in events.unique().items() if e["shard"] == shard)
                arrivals = [index for _, index in ordered]
                assert arrivals == sorted(arrivals), f"shard {shard}'s events out of order"
    finally:
        fleet.stop()
    logs = {node: (tmp_path / f"{node}.log").read_text() for node in ("a", "b")}
    assert "shard 0: relaying to amqp" in logs["a"] and "shard 1: relaying to amqp" not in logs["a"]
    assert "shard 1: relaying to amqp" in logs["b"] and "shard 0: relaying to amqp" in logs["b"]
    asyncio.run(fleet_books(tmp_path, databases=[str(path) for path in files]))


def test_a_partner_moved_between_the_nodes_old_shards_events_first(
    tmp_path: Path, exchange: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partner with children moved from node a's shard to node b's and back, traffic through
    both nodes around each move: every account's versions arrive without a gap, and each event
    of an account on one shard arrives before any of its later versions on the other (node b's
    relay of shard 1 waits for the cursor node a's relay saves in shard 0's database, and back)."""
    fleet, files = broker_fleet(tmp_path, exchange, monkeypatch)
    events = Events(exchange)
    try:
        fleet.start("a")
        fleet.start("b")
        with fleet.client("a") as a, fleet.client("b") as b:
            clients = [a, b]
            root = new_account(a, 0)
            kids = [a.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"}).json()["id"]
                    for i in range(4)]  # fmt: skip
            subtree = [root, *kids]

            def traffic(tag: str) -> None:
                for i, kid in enumerate(subtree):
                    client = clients[i % 2]
                    r = client.post(f"/v1/accounts/{kid}/credits", json={"id": f"{tag}-cr-{i}", "amount": 100})
                    assert r.status_code == 201, r.text
                    r = clients[(i + 1) % 2].post(f"/v1/accounts/{kid}/holds", json={"id": f"{tag}-h-{i}", "amount": 9})
                    assert r.status_code == 201, r.text
                    assert client.post(f"/v1/accounts/{kid}/holds/{tag}-h-{i}/capture", json={}).status_code == 200

            traffic("before")
            for to_shard, client in ((1, b), (0, a)):
                moved = client.post(f"/v1/partners/{root}/move", json={"to_shard": to_shard})
                assert moved.status_code == 200 and moved.json()["status"] == "done", moved.text
                deadline = time.monotonic() + 10
                for c in clients:
                    while c.get(f"/v1/partners/{root}/placement").json().get("shard") != to_shard:
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                traffic(f"to-{to_shard}")
            until(lambda: complete(events, a, subtree), "every account's events")
    finally:
        fleet.stop()
    first: dict[str, int] = {}
    for index, (_, envelope) in enumerate(events.got):
        first.setdefault(envelope["id"], index)
    unique = events.unique()
    for account in subtree:
        mine = [e for e in unique.values() if e["account_id"] == account]
        assert {e["shard"] for e in mine} == {0, 1}
        for early in mine:
            for later in mine:
                if early["shard"] != later["shard"] and early["version"] < later["version"]:
                    assert first[early["id"]] < first[later["id"]], (account, early["id"], later["id"])
    asyncio.run(fleet_books(tmp_path, databases=[str(path) for path in files]))
