"""`balance-service run` consuming payment results from the real RabbitMQ and NATS JetStream:
SIGKILLed while results are being applied, restarted, and every hold is settled exactly once
(what was committed but not acknowledged is redelivered and replays); a success for a released
hold is dead-lettered and served as a ``hold.result_conflict`` event; the metrics count both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import nats
import pytest
from cuttable_proxy import CuttableProxy
from service_process import free_port, start_ready

from balance.events import catalogue as cat
from ci import skip_or_fail

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("BALANCE_TEST_NATS_URL", "nats://127.0.0.1:4222")
ADMIN_KEY = "adm_results_" + uuid.uuid4().hex
HOLDS = 2000  # half settled through RabbitMQ, half through NATS
AMOUNT = 10


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    found = {
        "BALANCE_RESULTS_QUEUE": f"e2e.payment-results.{tag}",
        "BALANCE_RESULTS_SUBJECT": f"e2e.payment-results.{tag}",
        "BALANCE_RESULTS_NATS_STREAM": f"E2E_RESULTS_{tag}",
        "BALANCE_RESULTS_NATS_DURABLE": f"e2e-results-{tag}",
        "BALANCE_DEAD_LETTERS": f"e2e.dead-letters.{tag}",
        "BALANCE_DEAD_LETTERS_NATS_STREAM": f"E2E_DEAD_{tag}",
    }
    yield found
    asyncio.run(_cleanup(found))


async def _cleanup(names: dict[str, str]) -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
        channel = await connection.channel()
        for queue in (names["BALANCE_RESULTS_QUEUE"], names["BALANCE_DEAD_LETTERS"]):
            await channel.queue_delete(queue)
        await channel.exchange_delete(names["BALANCE_DEAD_LETTERS"])
        await connection.close()
    except Exception:  # noqa: BLE001, S110 (nothing was made: the test skipped)
        pass
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=1)
        js = nc.jetstream()
        for stream in (names["BALANCE_RESULTS_NATS_STREAM"], names["BALANCE_DEAD_LETTERS_NATS_STREAM"]):
            try:
                await js.delete_stream(stream)
            except Exception:  # noqa: BLE001, S110
                pass
        await nc.close()
    except Exception:  # noqa: BLE001, S110
        pass


async def publish(names: dict[str, str], amqp: list[dict[str, Any]], over_nats: list[dict[str, Any]]) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=3)
    channel = await connection.channel(publisher_confirms=True)
    for message in amqp:
        body = aio_pika.Message(json.dumps(message).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(body, routing_key=names["BALANCE_RESULTS_QUEUE"])
    await connection.close()
    nc = await nats.connect(NATS_URL, connect_timeout=3)
    js = nc.jetstream()
    for message in over_nats:
        await js.publish(names["BALANCE_RESULTS_SUBJECT"], json.dumps(message).encode())
    await nc.close()


async def nats_dead_letters(names: dict[str, str]) -> list[dict[str, str]]:
    nc = await nats.connect(NATS_URL, connect_timeout=3)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        names["BALANCE_DEAD_LETTERS"], durable=None, stream=names["BALANCE_DEAD_LETTERS_NATS_STREAM"]
    )
    try:
        found = await sub.fetch(10, timeout=2)
    except (TimeoutError, nats.errors.TimeoutError):
        found = []
    await nc.close()
    return [dict(message.headers or {}) for message in found]


def until(check: Any, what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_results_applied_once_across_a_sigkill_and_a_conflict_served_as_an_event(
    tmp_path: Path, names: dict[str, str]
) -> None:
    try:
        asyncio.run(_brokers_up())
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"RabbitMQ or NATS not reachable: {exc!r}")
    env = {
        **os.environ, **names, "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_DATA_DIR": str(tmp_path / "data"),
        "BALANCE_SHARDS": "2", "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(free_port()),
        "BALANCE_AMQP_URL": AMQP_URL, "BALANCE_NATS_URL": NATS_URL, "BALANCE_RELAY": "off",
    }  # fmt: skip
    log = tmp_path / "service.log"
    proc, url = start_ready(env, log)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            created = http.post(
                "/v1/accounts", json={"kind": "partner", "region": "EU", "currency": "EUR", "name": "p"}
            )
            assert created.status_code == 201, created.text
            account_id = created.json()["id"]
            assert (
                http.post(f"/v1/accounts/{account_id}/credits", json={"id": "seed", "amount": 10**9}).status_code == 201
            )
            operations = [
                {"op": "hold", "account_id": account_id, "id": f"h{n}", "amount": AMOUNT, "expires_in_s": 3600}
                for n in range(HOLDS)
            ] + [{"op": "hold", "account_id": account_id, "id": "c1", "amount": 77, "expires_in_s": 3600}]
            batch = http.post("/v1/batch", json={"operations": operations})
            assert [r["status"] for r in batch.json()["results"]] == [201] * (HOLDS + 1)
        half = HOLDS // 2
        succeeded = [{"id": f"p{n}", "account_id": account_id, "hold_id": f"h{n}", "result": "succeeded"}
                     for n in range(half)]  # fmt: skip
        failed = [{"id": f"p{n}", "account_id": account_id, "hold_id": f"h{n}", "result": "failed"}
                  for n in range(half, HOLDS)]  # fmt: skip
        publishing = threading.Thread(target=lambda: asyncio.run(publish(names, succeeded, failed)))
        publishing.start()  # the service applies them while they are published
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            full = HOLDS * AMOUNT + 77
            seen = until(
                lambda: (r := http.get(f"/v1/accounts/{account_id}").json()["reserved"]) < full and r,
                "the first results applied",
            )
            proc.send_signal(signal.SIGKILL)  # mid-stream: some committed, some not, some committed but not acked
            proc.wait(10)
        publishing.join(60)
        assert seen > 77  # results were still pending when the process was killed
        proc, url = start_ready(env, log)
        with httpx.Client(base_url=url, headers=auth, timeout=30) as http:
            account = until(
                lambda: (a := http.get(f"/v1/accounts/{account_id}").json())["reserved"] == 77 and a,
                "every hold but c1 settled",
            )
            assert account["balance"] == 10**9 - half * AMOUNT  # each success captured exactly once
            for n in (0, half - 1):
                assert http.get(f"/v1/accounts/{account_id}/holds/h{n}").json()["status"] == "captured"
            for n in (half, HOLDS - 1):
                assert http.get(f"/v1/accounts/{account_id}/holds/h{n}").json()["status"] == "released"
            # Redelivering them all again (a gateway that re-sends) moves nothing.
            asyncio.run(publish(names, succeeded[:20], failed[:20]))
            # A success for a hold released meanwhile: a conflict.
            assert http.post(f"/v1/accounts/{account_id}/holds/c1/release", content=b"").status_code == 200
            conflict = {"id": "pay-c1", "account_id": account_id, "hold_id": "c1", "result": "succeeded"}
            asyncio.run(publish(names, [], [conflict]))

            def conflict_event() -> dict[str, Any] | None:
                events: list[dict[str, Any]] = []
                params: dict[str, Any] = {"limit": 1000}
                while True:
                    answer = http.get("/v1/events", params=params)
                    assert answer.status_code == 200, answer.text
                    page = answer.json()
                    events += page["data"]
                    if not page["data"]:
                        return next((e for e in events if e["type"] == cat.HOLD_RESULT_CONFLICT), None)
                    params["after"] = page["next_cursor"]

            event = until(conflict_event, "the hold.result_conflict event", timeout_s=30)
            assert event["account_id"] == account_id
            assert event["data"]["hold"]["status"] == "released"
            assert event["data"]["result"]["id"] == "pay-c1"
            text = until(
                lambda: (
                    (t := http.get("/metrics").text)
                    and metric(t, "balance_payment_results_applied_total", outcome="replayed") >= 40
                    and t
                ),
                "the redeliveries replayed",
            )
            assert metric(text, "balance_payment_results_conflicts_total", broker="nats") == 1
            assert metric(text, "balance_payment_results_dead_lettered_total", reason="result_conflict") == 1
            final = http.get(f"/v1/accounts/{account_id}").json()
            assert (final["balance"], final["reserved"]) == (10**9 - half * AMOUNT, 0)
        headers = asyncio.run(nats_dead_letters(names))
        assert [h.get("x-balance-reason") for h in headers] == ["result_conflict"]
        assert headers[0]["x-balance-message-id"] == "pay-c1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:  # noqa: BLE001
            proc.kill()


async def _brokers_up() -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=3)
    await connection.close()
    nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=1)
    await nc.close()


def test_a_bad_results_setting_stops_the_start_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_DATA_DIR": str(tmp_path), "BALANCE_RESULTS": "maybe",
           "BALANCE_PORT": str(free_port()), "BALANCE_RELAY": "off"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "balance", "run"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "balance-service: BALANCE_RESULTS must be on or off"


def drop_links(proxy: CuttableProxy) -> None:
    """Every open link closed (a network blip); new connections are still accepted."""
    with proxy.lock:
        for link in proxy.links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()
        proxy.links.clear()


def test_results_keep_applying_after_both_brokers_dropped_the_connection(tmp_path: Path, names: dict[str, str]) -> None:
    try:
        asyncio.run(_brokers_up())
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"RabbitMQ or NATS not reachable: {exc!r}")
    amqp_host, amqp_port = AMQP_URL.split("@", 1)[1].rstrip("/").split(":")
    nats_host, nats_port = NATS_URL.split("//", 1)[1].split(":")
    rabbit, nats_link = CuttableProxy(amqp_host, int(amqp_port)), CuttableProxy(nats_host, int(nats_port))
    env = {
        **os.environ, **names, "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_DATA_DIR": str(tmp_path / "data"),
        "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(free_port()), "BALANCE_RELAY": "off",
        "BALANCE_AMQP_URL": f"{AMQP_URL.split('@', 1)[0]}@127.0.0.1:{rabbit.port}/",
        "BALANCE_NATS_URL": f"nats://127.0.0.1:{nats_link.port}",
    }  # fmt: skip
    log = tmp_path / "service.log"
    proc, url = start_ready(env, log)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as http:
            created = http.post(
                "/v1/accounts", json={"kind": "partner", "region": "EU", "currency": "EUR", "name": "p"}
            )
            account_id = created.json()["id"]
            assert (
                http.post(f"/v1/accounts/{account_id}/credits", json={"id": "seed", "amount": 1_000}).status_code == 201
            )
            operations = [
                {"op": "hold", "account_id": account_id, "id": f"h{n}", "amount": 10, "expires_in_s": 3600}
                for n in range(8)
            ]
            assert http.post("/v1/batch", json={"operations": operations}).status_code == 200

            def results(numbers: range) -> list[dict[str, Any]]:
                return [{"id": f"p{n}", "account_id": account_id, "hold_id": f"h{n}", "result": "succeeded"}
                        for n in numbers]  # fmt: skip

            def reserved() -> int:
                return int(http.get(f"/v1/accounts/{account_id}").json()["reserved"])

            until(lambda: "consuming RabbitMQ" in log.read_text() and "consuming NATS" in log.read_text(), "consumers")
            asyncio.run(publish(names, results(range(0, 2)), results(range(2, 4))))
            until(lambda: reserved() == 40, "the first four applied")
            drop_links(rabbit)
            drop_links(nats_link)
            asyncio.run(publish(names, results(range(4, 6)), results(range(6, 8))))
            until(lambda: reserved() == 0, "the last four applied after the reconnections", timeout_s=60)
            assert http.get(f"/v1/accounts/{account_id}").json()["balance"] == 1_000 - 8 * 10
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:  # noqa: BLE001
            proc.kill()
        rabbit.cut()
        nats_link.cut()
