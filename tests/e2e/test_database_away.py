"""A database that goes away, measured from outside: a real server process (``python -m balance
run``) on a private mariadbd (``private_mariadb``: its own port and data directory) that the
test SIGKILLs and starts again.

Lost while serving: 8 writers credit one account over HTTP, each retrying a 503 with the same
id (as a client should); during the outage the answers are fast 503s, soon after the database
is back the service serves again, and at the end every acknowledged credit is in the history
and the balance equals the number of acknowledged credits.

Away at start: the server starts, says in ``/readyz`` that it is retrying and why, logs one
line per attempt and no traceback, and becomes ready once the database comes up.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from service_process import free_port

ADMIN_KEY = "adm_away_" + uuid.uuid4().hex
WRITERS = 8
TRAFFIC_BEFORE_S = 1.5  # credits flow this long before the kill
OUTAGE_S = 3.0  # the database is away this long
BACK_WITHIN_S = 5.0  # after the database answers again, the service serves within this (backoff cap: 1 s)
FAST_503_S = 1.0  # an answer during the outage comes within this: refused at once, not queued
START_TIMEOUT_S = 30.0


class Server:
    """``python -m balance run`` (one shard) on the private database."""

    def __init__(self, db_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCE_")}
        env.update(
            BALANCE_ADMIN_KEY=ADMIN_KEY, BALANCE_DB_URL=db_url, BALANCE_HOST="127.0.0.1", BALANCE_PORT=str(self.port),
            BALANCE_DATA_DIR=str(log_path.parent / "data"),
        )  # fmt: skip
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "balance", "run"], env=env, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10.0)


async def wait_ready(server: Server, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    async with client(server.base_url) as http:
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, f"the server exited:\n{server.log()[-3000:]}"
            try:
                response = await http.get("/readyz")
                if response.status_code == 200:
                    return response.json()  # type: ignore[no-any-return]
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError(f"not ready within {timeout_s}s:\n{server.log()[-3000:]}")


@dataclass
class Writes:
    acknowledged: list[str] = field(default_factory=list)  # ids answered 201
    outage_answers: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds) while away
    other: list[str] = field(default_factory=list)  # anything but 201 and 503
    first_201_after_return: float | None = None


async def test_a_database_killed_mid_traffic_gives_fast_503s_then_serves_again_and_loses_nothing(
    private_mariadb: Any, tmp_path: Path
) -> None:
    server = Server(private_mariadb.url(), tmp_path / "server.log")
    try:
        await wait_ready(server)
        async with client(server.base_url) as http:
            response = await http.post("/v1/accounts", json={"kind": "partner", "region": "US", "currency": "USD"})
            assert response.status_code == 201, response.text
            account = response.json()["id"]

        writes = Writes()
        phase = {"away": False, "back_at": None}
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            async with client(server.base_url) as http:
                for i in range(10**9):
                    if stop.is_set():
                        return
                    op_id = f"w{n}-{i}"
                    while not stop.is_set():  # the same id until it is acknowledged
                        sent, away = time.monotonic(), phase["away"]
                        try:
                            response = await http.post(
                                f"/v1/accounts/{account}/credits", json={"id": op_id, "amount": 1}
                            )
                        except httpx.TransportError as exc:
                            writes.other.append(f"{op_id}: {exc!r}")
                            await asyncio.sleep(0.05)
                            continue
                        took = time.monotonic() - sent
                        if away and phase["away"]:
                            writes.outage_answers.append((response.status_code, took))
                        if response.status_code == 201:
                            writes.acknowledged.append(op_id)
                            back_at = phase["back_at"]
                            if back_at is not None and writes.first_201_after_return is None:
                                writes.first_201_after_return = time.monotonic() - back_at
                            break
                        if response.status_code != 503:
                            writes.other.append(f"{op_id}: {response.status_code} {response.text[:200]}")
                            break
                        assert "retry-after" in response.headers
                        await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
        try:
            await asyncio.sleep(TRAFFIC_BEFORE_S)
            before_kill = len(writes.acknowledged)
            private_mariadb.kill()  # SIGKILL, mid-traffic
            phase["away"] = True
            await asyncio.sleep(OUTAGE_S)
            acknowledged_during = len(writes.acknowledged) - before_kill
            await asyncio.to_thread(private_mariadb.start)  # same data, same port; returns once it answers
            phase["away"], phase["back_at"] = False, time.monotonic()
            for _ in range(int(BACK_WITHIN_S * 20)):
                if writes.first_201_after_return is not None:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a little traffic after the return
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        assert not writes.other, writes.other[:5]
        assert before_kill >= 100, f"only {before_kill} credits acknowledged before the kill"
        statuses = [status for status, _ in writes.outage_answers]
        # Answers that were already committing at the kill may still be 201 (acknowledged before
        # it); once the database is gone, everything is a 503, and fast.
        assert statuses.count(503) >= 50, f"too few answers during the outage: {len(statuses)}"
        assert acknowledged_during <= WRITERS, f"{acknowledged_during} credits acknowledged with the database away"
        slowest = max(took for status, took in writes.outage_answers if status == 503)
        assert slowest < FAST_503_S, f"a 503 during the outage took {slowest:.2f}s"
        assert writes.first_201_after_return is not None, f"not serving again:\n{server.log()[-3000:]}"
        assert writes.first_201_after_return < BACK_WITHIN_S

        async with client(server.base_url) as http:
            state = (await http.get(f"/v1/accounts/{account}")).json()
            history: list[str] = []
            cursor = None
            while True:
                params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
                page = (await http.get(f"/v1/accounts/{account}/transactions", params=params)).json()
                history += [row["operation_id"] for row in page["data"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            readyz = (await http.get("/readyz")).json()
        assert len(set(writes.acknowledged)) == len(writes.acknowledged)
        assert set(writes.acknowledged) <= set(history), "an acknowledged credit is missing"
        assert len(history) == len(writes.acknowledged), "a credit is in the history that was never acknowledged"
        assert state["balance"] == len(writes.acknowledged)
        assert readyz["shards"]["0"]["state"] == "ready" and readyz["shards"]["0"]["last_error"]
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        print(
            f"\n{before_kill} acknowledged before the kill, {len(statuses)} answers during the {OUTAGE_S}s outage "
            f"({statuses.count(503)} x 503, slowest {slowest * 1000:.0f} ms), serving again "
            f"{writes.first_201_after_return:.2f}s after the database answered; {len(writes.acknowledged)} "
            f"acknowledged credits, balance {state['balance']}"
        )
    finally:
        server.stop()


async def test_a_server_started_while_the_database_is_down_becomes_ready_once_it_comes_up(
    private_mariadb: Any, tmp_path: Path
) -> None:
    private_mariadb.kill()
    server = Server(private_mariadb.url(), tmp_path / "server.log")
    try:
        async with client(server.base_url) as http:
            seen: dict[str, Any] = {}
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    response = await http.get("/readyz")
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                assert response.status_code == 503
                seen = response.json()["shards"]["0"]
                if seen["state"] == "retrying" and seen["attempts"] >= 3:
                    break
                await asyncio.sleep(0.05)
            assert seen.get("state") == "retrying", seen
            assert "Can't connect" in seen["last_error"] or "refused" in seen["last_error"], seen
            assert 0 <= seen["retry_in_s"] <= 1.0
            response = await http.post("/v1/accounts", json={"kind": "partner", "region": "US", "currency": "USD"})
            assert response.status_code == 503 and response.headers["retry-after"]

            await asyncio.to_thread(private_mariadb.start)
            came_up = time.monotonic()
            ready = await wait_ready(server)
            became_ready = time.monotonic() - came_up
            assert ready["shards"]["0"]["state"] == "ready"
            response = await http.post("/v1/accounts", json={"kind": "partner", "region": "US", "currency": "USD"})
            assert response.status_code == 201, response.text
            account = response.json()["id"]
            response = await http.post(f"/v1/accounts/{account}/credits", json={"id": "first", "amount": 5})
            assert response.status_code == 201 and response.json()["account"]["balance"] == 5
        assert became_ready < BACK_WITHIN_S, f"ready {became_ready:.2f}s after the database came up"
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        attempts = [line for line in log.splitlines() if "recovery attempt" in line]
        assert len(attempts) >= 3, log[-3000:]
        assert all("retrying in" in line for line in attempts)
        print(f"\nready {became_ready:.2f}s after the database came up; {len(attempts)} attempts logged, e.g.")
        print(attempts[0])
    finally:
        server.stop()
