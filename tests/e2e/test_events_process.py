"""The real server process with its relay (a child process) to the real RabbitMQ and NATS:
SIGKILL mid-stream, restart, and every acknowledged change has its event on both brokers,
each account's versions gap-free after de-duplication by event id."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from balance.events import catalogue as cat

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("BALANCE_TEST_NATS_URL", "nats://127.0.0.1:4222")
ADMIN_KEY = "adm_events_" + uuid.uuid4().hex
WORKERS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.proc, self.url = env, log, None, ""

    def start(self) -> None:
        port = free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "balance", "run"], env={**self.env, "BALANCE_PORT": str(port)},
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("the server did not become ready:\n" + self.log.read_text()[-3000:])


async def load(url: str, accounts: list[str], acknowledged: dict[str, str], stop: asyncio.Event, worker: int) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as client:
        n = 0
        while not stop.is_set():
            n += 1
            account = accounts[(worker + n) % len(accounts)]
            op = f"w{worker}-{n}"
            try:
                if n % 3 == 2:
                    response = await client.post(f"/v1/accounts/{account}/holds", json={"id": op, "amount": 5})
                    if response.status_code == 201:
                        acknowledged[op] = account
                        response = await client.post(f"/v1/accounts/{account}/holds/{op}/capture", json={})
                        if response.status_code == 200:
                            acknowledged[f"capture:{op}"] = account
                    continue
                response = await client.post(f"/v1/accounts/{account}/credits", json={"id": op, "amount": 10})
                if response.status_code == 201:
                    acknowledged[op] = account
            except httpx.HTTPError:
                return  # the server was killed


async def relay_saved_its_cursors(data: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        names: set[str] = set()
        for shard in range(2):
            db = sqlite3.connect(data / f"shard-{shard}.db", timeout=10)
            try:
                names |= {f"{shard}:{row[0]}" for row in db.execute("SELECT name FROM meta WHERE name LIKE 'events_%'")}
            finally:
                db.close()
        if len(names) == 4:  # two shards, two sinks
            return
        assert time.monotonic() < deadline, names
        await asyncio.sleep(0.2)


def missing_report(data: Path, acknowledged: dict[str, str], events: list[dict[str, Any]]) -> str:
    missing = sorted(set(acknowledged) - seen_operations(events))
    lines = [f"{len(missing)} acknowledged operations without their event, e.g. {missing[:5]}"]
    for shard in range(2):
        db = sqlite3.connect(data / f"shard-{shard}.db", timeout=10)
        try:
            lines.append(f"shard {shard} meta: {db.execute('SELECT name, value FROM meta').fetchall()}")
            for op in missing[:3]:
                kind, _, op_id = op.rpartition(":")
                rows = db.execute("SELECT seq, kind, status, code FROM journal WHERE op_id = ?", (op_id,)).fetchall()
                lines.append(f"  {op}: {rows}")
        finally:
            db.close()
    seqs = sorted(e["seq"] for e in events)
    lines.append(f"events: {len(events)}, seqs {seqs[:3]}...{seqs[-3:]}")
    return "\n".join(lines)


def complete(acknowledged: dict[str, str], versions: dict[str, int], events: list[dict[str, Any]]) -> bool:
    """Every acknowledged operation's event, and every account's events up to its version now
    (an operation committed but unanswered when the service died has its event too)."""
    latest: dict[str, int] = {}
    for event in events:
        latest[event["account_id"]] = max(latest.get(event["account_id"], 0), event["version"])
    reached = all(latest.get(account, 0) >= version for account, version in versions.items())
    return reached and set(acknowledged) <= seen_operations(events)


def seen_operations(events: list[dict[str, Any]]) -> set[str]:
    found = set()
    for event in events:
        if event["type"] == cat.TRANSACTION_CREATED:
            txn = event["data"]["transaction"]
            found.add(f"capture:{txn['operation_id']}" if txn["kind"] == "capture" else txn["operation_id"])
    return found


async def test_sigkill_mid_stream_then_restart_every_acknowledged_change_has_its_event(tmp_path: Path) -> None:
    try:
        rabbit = await aio_pika.connect(AMQP_URL, timeout=3)
        nc = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ or NATS not reachable: {exc!r}")
    run = uuid.uuid4().hex[:8]
    exchange, stream, prefix = f"balance.events.test-{run}", f"BALANCE_EVENTS_TEST_{run.upper()}", f"test.{run}"
    channel = await rabbit.channel()
    queue = await channel.declare_queue(f"test-events-{run}", exclusive=True)
    await queue.bind(await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True), "#")
    env = {
        **os.environ, "BALANCE_DATA_DIR": str(tmp_path / "data"), "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_SHARDS": "2",
        "BALANCE_HOST": "127.0.0.1", "BALANCE_EXPIRY_JOB": "off", "BALANCE_RESULTS": "off", "BALANCE_AMQP_URL": AMQP_URL, "BALANCE_AMQP_EXCHANGE": exchange,
        "BALANCE_NATS_URL": NATS_URL, "BALANCE_NATS_STREAM": stream, "BALANCE_NATS_SUBJECT_PREFIX": prefix,
    }  # fmt: skip
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        await server.ready()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            accounts = []
            for _ in range(4):
                response = await client.post(
                    "/v1/accounts", json={"kind": "partner", "region": "EU", "currency": "EUR"}
                )
                accounts.append(response.json()["id"])
        acknowledged: dict[str, str] = {}
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(server.url, accounts, acknowledged, stop, w)) for w in range(WORKERS)]
        await relay_saved_its_cursors(tmp_path / "data")  # it runs and has published some
        assert server.proc is not None
        relays = children_of(server.proc.pid)
        assert relays, "the server started no relay process"
        for pid in relays:  # the relay falls behind: acknowledged changes wait to be published
            os.kill(pid, signal.SIGSTOP)
        published_before = len(acknowledged)
        await asyncio.sleep(1.0)
        os.kill(server.proc.pid, signal.SIGKILL)  # mid-stream: requests in flight, events not yet published
        server.proc.wait()
        stop.set()
        await asyncio.gather(*workers)
        assert len(acknowledged) > published_before + 50 and published_before > 50
        for pid in relays:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in relays):  # the relay follows its service
            assert time.monotonic() < deadline, (
                "the relay outlived its service:\n" + (tmp_path / "server.log").read_text()[-3000:]
            )
            await asyncio.sleep(0.1)
        server.start()
        await server.ready()
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            versions = {a: (await client.get(f"/v1/accounts/{a}")).json()["version"] for a in accounts}

        amqp_events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not complete(acknowledged, versions, amqp_events):
            assert time.monotonic() < deadline, missing_report(tmp_path / "data", acknowledged, amqp_events)
            message = await queue.get(no_ack=True, fail=False, timeout=1)
            if message is not None:
                amqp_events.append(json.loads(message.body))
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{prefix}.>", stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        nats_events: list[dict[str, Any]] = []
        while not complete(acknowledged, versions, nats_events):
            assert time.monotonic() < deadline, missing_report(tmp_path / "data", acknowledged, nats_events)
            try:
                nats_events += [json.loads(m.data) for m in await sub.fetch(500, timeout=1)]
            except TimeoutError:
                continue
        for events in (amqp_events, nats_events):
            unique = {e["id"]: e for e in events}.values()
            for account in accounts:
                mine = sorted({e["version"] for e in unique if e["account_id"] == account})
                assert mine[: versions[account]] == list(range(1, versions[account] + 1)), account
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=20)
        await channel.exchange_delete(exchange)
        await rabbit.close()
        try:
            await nc.jetstream().delete_stream(stream)
        except Exception:  # noqa: BLE001 (the relay may not have created it)
            pass
        await nc.close()


async def test_with_the_broker_away_the_service_is_ready_and_money_moves(tmp_path: Path) -> None:
    """Nothing listens at the broker's address: the relay retries in the background, the
    service answers at once and /readyz stays 200; the feed still serves every event."""
    env = {
        **os.environ, "BALANCE_DATA_DIR": str(tmp_path / "data"), "BALANCE_ADMIN_KEY": ADMIN_KEY,
        "BALANCE_HOST": "127.0.0.1", "BALANCE_EXPIRY_JOB": "off", "BALANCE_RESULTS": "off", "BALANCE_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }  # fmt: skip
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        await server.ready()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=5) as client:
            account = (
                await client.post("/v1/accounts", json={"kind": "user", "region": "US", "currency": "USD"})
            ).json()
            began = time.monotonic()
            for n in range(50):
                response = await client.post(f"/v1/accounts/{account['id']}/credits", json={"id": f"c{n}", "amount": 1})
                assert response.status_code == 201
            assert time.monotonic() - began < 5
            await asyncio.sleep(1.5)  # the relay has failed a few times by now
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text  # the relay's lag, seen by the service
            lag = [
                line
                for line in metrics.splitlines()
                if line.startswith('balance_events_lag_seconds{shard="0",sink="amqp"}')
            ]
            assert lag and float(lag[0].rsplit(" ", 1)[1]) > 1.0, metrics[-2000:]
            feed = (await client.get("/v1/events?limit=1000")).json()["data"]
            assert [e["version"] for e in feed if e["account_id"] == account["id"]] == list(range(1, 52))
            assert server.proc is not None
            relays = children_of(server.proc.pid)
            os.kill(relays[0], signal.SIGKILL)  # the relay alone dies: the service starts another
            deadline = time.monotonic() + 10
            while not (set(children_of(server.proc.pid)) - set(relays)):
                assert time.monotonic() < deadline, "no new relay process"
                await asyncio.sleep(0.1)
            assert (await client.get("/readyz")).status_code == 200
        assert "events shard 0 -> amqp: publish failed" in server.log.read_text()
        assert "the event relay exited" in server.log.read_text()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=20)
