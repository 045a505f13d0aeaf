"""`balance-service run` in job mode (a broker configured) and `balance-service expiry-job` as
real processes on the real RabbitMQ: the service's sweep leaves fresh expiries to the job;
once the job runs, the holds are expired through its notices, and its /metrics shows its lag.
By default (``BALANCE_EXPIRY_JOB=process``) `run` starts the job itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import httpx
import pytest
from service_process import free_port, start_ready

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ADMIN_KEY = "adm_expiry_" + uuid.uuid4().hex
HOLDS = 50


def lag_of(metrics: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith('balance_expiry_lag_seconds{shard="0"}'):
            return float(line.split()[-1])
    return None


async def test_the_job_process_announces_and_the_service_expires(tmp_path: Path) -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable: {exc!r}")
    prefix = f"test.expiry-due.{uuid.uuid4().hex[:10]}"
    job_metrics = free_port()
    env = {
        **os.environ, "BALANCE_DATA_DIR": str(tmp_path / "data"), "BALANCE_ADMIN_KEY": ADMIN_KEY,
        "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(free_port()), "BALANCE_SHARDS": "1",
        "BALANCE_REGION": "EU", "BALANCE_AMQP_URL": AMQP_URL, "BALANCE_RELAY": "off",
        "BALANCE_EXPIRY_JOB": "external", "BALANCE_EXPIRY_QUEUE_PREFIX": prefix, "BALANCE_EXPIRY_SCAN_S": "0.2",
        "BALANCE_EXPIRY_METRICS_PORT": str(job_metrics),
    }  # fmt: skip
    server, url = start_ready(env, tmp_path / "server.log")
    job = None
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            account = client.post("/v1/accounts", json={"kind": "partner", "region": "EU", "currency": "EUR"})
            account_id = account.json()["id"]
            assert (
                client.post(f"/v1/accounts/{account_id}/credits", json={"id": "c", "amount": 10_000}).status_code == 201
            )
            for n in range(HOLDS):
                placed = client.post(
                    f"/v1/accounts/{account_id}/holds", json={"id": f"h{n}", "amount": 7, "expires_in_s": 1}
                )
                assert placed.status_code == 201, placed.text
            time.sleep(2.5)  # due, and the service's sweep (1 s) ran: job mode leaves them to the job
            statuses = {client.get(f"/v1/accounts/{account_id}/holds/h{n}").json()["status"] for n in range(HOLDS)}
            assert statuses == {"pending"}
            assert (lag := lag_of(client.get("/metrics").text)) is not None and lag > 0.5  # set with each sweep (1 s)

            with (tmp_path / "job.log").open("ab") as out:
                job = subprocess.Popen(
                    [sys.executable, "-m", "balance", "expiry-job"], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            deadline = time.monotonic() + 20
            while True:
                holds = [client.get(f"/v1/accounts/{account_id}/holds/h{n}").json() for n in range(HOLDS)]
                if all(h["status"] == "expired" for h in holds):
                    break
                assert job.poll() is None, (tmp_path / "job.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
                time.sleep(0.2)
            balance = client.get(f"/v1/accounts/{account_id}").json()
            assert (balance["balance"], balance["reserved"], balance["available"]) == (10_000, 0, 10_000)
            history = client.get(f"/v1/accounts/{account_id}/transactions?limit=1000").json()["data"]
            assert sorted(row["hold_id"] for row in history if row["kind"] == "expire") == sorted(
                f"h{n}" for n in range(HOLDS)
            )  # each once
        deadline = time.monotonic() + 10
        while lag_of(httpx.get(f"http://127.0.0.1:{job_metrics}/metrics").text) != 0.0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for proc in (job, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"{prefix}.0")


async def test_run_starts_the_job_itself_by_default(tmp_path: Path) -> None:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable: {exc!r}")
    prefix = f"test.expiry-due.{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ, "BALANCE_DATA_DIR": str(tmp_path / "data"), "BALANCE_ADMIN_KEY": ADMIN_KEY,
        "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(free_port()), "BALANCE_SHARDS": "2",
        "BALANCE_AMQP_URL": AMQP_URL, "BALANCE_RELAY": "off", "BALANCE_EXPIRY_QUEUE_PREFIX": prefix,
    }  # fmt: skip
    env.pop("BALANCE_EXPIRY_JOB", None)
    server, url = start_ready(env, tmp_path / "server.log")
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            accounts = []
            while len({a.split("-")[1] for a in accounts}) < 2:  # an account on each shard
                accounts.append(
                    client.post("/v1/accounts", json={"kind": "partner", "region": "US", "currency": "USD"}).json()[
                        "id"
                    ]
                )
            for account_id in accounts:
                assert (
                    client.post(f"/v1/accounts/{account_id}/credits", json={"id": "c", "amount": 100}).status_code
                    == 201
                )
                body = {"id": "h", "amount": 60, "expires_in_s": 1}
                assert client.post(f"/v1/accounts/{account_id}/holds", json=body).status_code == 201
            deadline = time.monotonic() + 20  # well before the sweep's fallback (30 s)
            while {client.get(f"/v1/accounts/{a}/holds/h").json()["status"] for a in accounts} != {"expired"}:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.2)
            assert {client.get(f"/v1/accounts/{a}").json()["reserved"] for a in accounts} == {0}
            metrics = client.get("/metrics").text
            assert 'balance_expiry_notices_handled_total{outcome="expired",shard="' in metrics, metrics[-2000:]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log = (tmp_path / "server.log").read_text()
        async with connection:
            channel = await connection.channel()
            for shard in (0, 1):
                await channel.queue_delete(f"{prefix}.{shard}")
    assert "Traceback" not in log, log[-3000:]
