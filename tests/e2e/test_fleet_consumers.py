"""Consumers wherever the service runs, with the real RabbitMQ.

Two real nodes (node a owns shard 0, node b shard 1): each runs the
payment-results consumer and, for the shards it owns, the expiry job and its consumers.
Results for holds on both shards, each published twice, all arrive on the one queue that both
nodes consume: every hold is captured exactly once, and none is put back (a result for the
other node's shard is applied by that node, through the fleet's forwarding). Holds that expire
on both shards are expired by the notices (the sweep's fallback is an hour away).

Under uvicorn (``BALANCE_HTTP_SERVER=uvicorn``, ``balance.asgi``): the relay, the expiry job and
consumers and the payment results consumer run as with the built-in server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from fleet_nodes import Fleet, fleet_books, new_account
from service_process import free_port, start_ready

from balance import cli

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
HOLDS_PER_SHARD = 60
EXPIRING_PER_SHARD = 20


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    found = {
        "BALANCE_RESULTS_QUEUE": f"e2e.fleet-results.{tag}",
        "BALANCE_DEAD_LETTERS": f"e2e.fleet-dead.{tag}",
        "BALANCE_EXPIRY_QUEUE_PREFIX": f"e2e.fleet-expiry.{tag}",
        "BALANCE_AMQP_EXCHANGE": f"e2e.fleet-events.{tag}",
    }
    yield found
    asyncio.run(_cleanup(found))


async def _cleanup(names: dict[str, str]) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=3)
    channel = await connection.channel()
    for queue in (names["BALANCE_RESULTS_QUEUE"], names["BALANCE_DEAD_LETTERS"]):
        await channel.queue_delete(queue)
    for shard in (0, 1):
        await channel.queue_delete(f"{names['BALANCE_EXPIRY_QUEUE_PREFIX']}.{shard}")
    await channel.exchange_delete(names["BALANCE_DEAD_LETTERS"])
    await channel.exchange_delete(names["BALANCE_AMQP_EXCHANGE"])
    await connection.close()


async def publish(queue: str, messages: list[dict[str, Any]]) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=3)
    channel = await connection.channel(publisher_confirms=True)
    for message in messages:
        body = aio_pika.Message(json.dumps(message).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(body, routing_key=queue)
    await connection.close()


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def until(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_each_node_consumes_for_its_shards_results_applied_once_and_holds_expired(
    tmp_path: Path, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    assert cli.main(["shards", "add", "0", "--database", str(tmp_path / "shard-0.db"), "--node", "a"]) == 0
    assert cli.main(["shards", "add", "1", "--database", str(tmp_path / "shard-1.db"), "--node", "b"]) == 0
    fleet = Fleet(tmp_path)
    for env in fleet.envs.values():
        env.update(names, BALANCE_AMQP_URL=AMQP_URL, BALANCE_RELAY="off", BALANCE_EXPIRY_FALLBACK_S="3600")
        env.pop("BALANCE_NATS_URL", None)
    try:
        fleet.start("a")
        fleet.start("b")
        with fleet.client("a") as a, fleet.client("b") as b:
            holds: list[tuple[str, str]] = []
            expiring: list[tuple[str, str]] = []
            for shard in (0, 1):
                account = new_account(a, shard)
                assert (
                    a.post(f"/v1/accounts/{account}/credits", json={"id": f"cr-{shard}", "amount": 10**6}).status_code
                    == 201
                )
                for n in range(HOLDS_PER_SHARD):
                    r = a.post(
                        f"/v1/accounts/{account}/holds", json={"id": f"h-{n}", "amount": 10, "expires_in_s": 600}
                    )
                    assert r.status_code == 201, r.text
                    holds.append((account, f"h-{n}"))
                for n in range(EXPIRING_PER_SHARD):
                    r = b.post(f"/v1/accounts/{account}/holds", json={"id": f"x-{n}", "amount": 7, "expires_in_s": 1})
                    assert r.status_code == 201, r.text
                    expiring.append((account, f"x-{n}"))
            results = [
                {"id": f"res-{account}-{hold}", "account_id": account, "hold_id": hold, "result": "succeeded"}
                for account, hold in holds
            ]
            asyncio.run(publish(names["BALANCE_RESULTS_QUEUE"], results + results))  # each one twice

            def status(account: str, hold: str) -> str:
                return str(a.get(f"/v1/accounts/{account}/holds/{hold}").json()["status"])

            until(lambda: all(status(*h) == "captured" for h in holds), "every hold captured", 90)
            until(lambda: all(status(*h) == "expired" for h in expiring), "every short hold expired by notice", 60)

            until(
                lambda: sum(metric(c, "balance_payment_results_applied_total") for c in (a, b)) == 2 * len(holds),
                "every result acknowledged",
            )
            applied = {
                outcome: sum(metric(c, "balance_payment_results_applied_total", outcome=outcome) for c in (a, b))
                for outcome in ("applied", "replayed", "already")
            }
            assert applied["applied"] == len(holds), applied  # each result applied once, its copy replayed
            assert applied["replayed"] + applied["already"] == len(holds), applied
            assert sum(metric(c, "balance_payment_results_retries_total") for c in (a, b)) == 0  # none put back
            assert sum(metric(c, "balance_payment_results_dead_lettered_total") for c in (a, b)) == 0
            # Each node consumed both shards' results (one queue), and each expired its own shard's holds.
            for client, shard in ((a, 0), (b, 1)):
                assert metric(client, "balance_expiry_notices_handled_total", shard=str(shard), outcome="expired") > 0
                assert metric(client, "balance_expiry_notices_handled_total", shard=str(1 - shard)) == 0
            for account in {account for account, _ in holds}:
                got = a.get(f"/v1/accounts/{account}").json()
                assert got["reserved"] == 0
                assert got["balance"] == 10**6 - 10 * HOLDS_PER_SHARD  # each hold captured once
    finally:
        fleet.stop()
    asyncio.run(fleet_books(tmp_path))


def test_under_uvicorn_the_relay_and_the_consumers_run(tmp_path: Path, names: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCE_")}
    env.update(
        names, BALANCE_AMQP_URL=AMQP_URL, BALANCE_HTTP_SERVER="uvicorn", BALANCE_EXPIRY_FALLBACK_S="3600",
        BALANCE_DATA_DIR=str(tmp_path), BALANCE_ADMIN_KEY="adm_uvicorn", BALANCE_SHARDS="1",
        BALANCE_HOST="127.0.0.1", BALANCE_PORT=str(free_port()),
    )  # fmt: skip
    proc, url = start_ready(env, tmp_path / "uvicorn.log")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer adm_uvicorn"}, timeout=10) as http:
            new = {"kind": "partner", "region": "EU", "currency": "EUR"}
            account = http.post("/v1/accounts", json=new).json()["id"]
            assert http.post(f"/v1/accounts/{account}/credits", json={"id": "c1", "amount": 100}).status_code == 201
            for hold, expires_in_s in (("paid", 600), ("late", 1)):
                r = http.post(
                    f"/v1/accounts/{account}/holds", json={"id": hold, "amount": 30, "expires_in_s": expires_in_s}
                )
                assert r.status_code == 201, r.text
            result = {"id": "r1", "account_id": account, "hold_id": "paid", "result": "succeeded"}
            asyncio.run(publish(names["BALANCE_RESULTS_QUEUE"], [result]))

            def status(hold: str) -> str:
                return str(http.get(f"/v1/accounts/{account}/holds/{hold}").json()["status"])

            until(lambda: status("paid") == "captured", "the result applied")
            until(lambda: status("late") == "expired", "the hold expired by notice")
            assert metric(http, "balance_expiry_notices_handled_total", outcome="expired") == 1
            assert metric(http, "balance_payment_results_applied_total", outcome="applied") == 1
            assert http.get(f"/v1/accounts/{account}").json()["balance"] == 70

        def relayed() -> int:
            with sqlite3.connect(tmp_path / "shard-0.db") as db:
                row = db.execute("SELECT value FROM meta WHERE name = 'events_amqp_seq'").fetchone()
            return 0 if row is None else int(row[0])

        until(lambda: relayed() > 0, "the relay's cursor saved")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
