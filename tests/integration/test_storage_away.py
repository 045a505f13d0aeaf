"""A database that is away at start, or goes away after a failed commit: the shard waits for
it with backoff, says what it is doing in ``/readyz``, logs one line per attempt, and serves
once it is back (real SQLite files; ``FaultyStorage`` makes the port refuse while ``down``)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from faults import FaultyStorage

from balance.api.app import BalanceApp
from balance.domain import commands as c
from balance.engine.recovery import Backoff
from balance.engine.shard import READY, RETRYING, STOPPED, ShardEngine
from balance.metrics import Metrics
from balance.service import BalanceService
from balance.storage.sqlite import SqliteShardStorage

A = "US-0-aaaa"


class FakeSleep:
    """The backoff's sleep: records each wait, yields once, and brings storage back after ``until`` waits."""

    def __init__(self, storage: FaultyStorage, until: int) -> None:
        self.storage, self.until = storage, until
        self.waits: list[float] = []
        self.seen: list[dict[str, object]] = []  # what /readyz would say of the shard during each wait
        self.engine: ShardEngine | None = None
        self.release = asyncio.Event()
        self.hold = False

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.engine is not None:
            self.seen.append(self.engine.status())
        if self.hold:
            await self.release.wait()
        await asyncio.sleep(0)
        if len(self.waits) >= self.until:
            self.storage.up()


def engine_on(path: Path, until: int, metrics: Metrics | None = None) -> tuple[ShardEngine, FaultyStorage, FakeSleep]:
    storage = FaultyStorage(SqliteShardStorage(path))
    sleep = FakeSleep(storage, until)
    backoff = Backoff(0.1, 2.0, rng=random.Random(1), sleep=sleep)
    engine = ShardEngine(0, storage, metrics=metrics, sweep_interval_s=3600, on_fatal=lambda exc: None, backoff=backoff)  # type: ignore[arg-type]
    sleep.engine = engine
    return engine, storage, sleep


async def test_a_database_away_at_start_is_retried_with_capped_growing_waits_until_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, storage, sleep = engine_on(tmp_path / "s0.db", until=9)
    storage.down()
    caplog.set_level(logging.INFO, logger="balance")

    await engine.start()

    assert engine.state == READY and engine.attempts == 0
    assert len(sleep.waits) == 9 and storage.refused["open"] == 9
    for attempt, wait in enumerate(sleep.waits, 1):
        ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
        assert ceiling / 2 <= wait <= ceiling
    assert sleep.waits[-1] >= 1.0  # it grew to the cap
    assert [seen["state"] for seen in sleep.seen] == [RETRYING] * 9
    assert [seen["attempts"] for seen in sleep.seen] == list(range(1, 10))
    assert all("unreachable" in str(seen["last_error"]) for seen in sleep.seen)
    # One line per failed attempt, no traceback; one when storage answers again.
    attempts = [r for r in caplog.records if "recovery attempt" in r.getMessage()]
    assert len(attempts) == 9 and all(r.exc_info is None and r.levelno == logging.WARNING for r in attempts)
    assert not any(r.exc_info for r in caplog.records)
    assert any("answers again after 9 failed attempts" in r.getMessage() for r in caplog.records)
    assert engine.metrics.storage_retries.labels("0", "recovery")._value.get() == 9
    reply = await engine.execute(c.CreateAccount(A, None, "partner", "US", "USD", A, 0, b"{}"))
    assert reply.status == 201
    await engine.stop()


async def test_readyz_says_per_shard_what_it_is_doing_and_the_last_error(tmp_path: Path) -> None:
    metrics = Metrics()
    engine, storage, sleep = engine_on(tmp_path / "s0.db", until=3, metrics=metrics)
    ready_engine = ShardEngine(1, SqliteShardStorage(tmp_path / "s1.db"), metrics=metrics, sweep_interval_s=3600)
    service = BalanceService([engine, ready_engine], "admin")
    app = BalanceApp(service, metrics, start_service=False)
    storage.down()
    sleep.hold = True  # the first wait lasts until released: look at /readyz meanwhile
    starting = asyncio.create_task(service.start())
    for _ in range(200):
        if engine.state == RETRYING and ready_engine.ready:
            break
        await asyncio.sleep(0.005)

    status, headers, body = await app.serve("GET", "/readyz", b"", {}, b"")

    assert status == 503 and (b"retry-after", b"1") in headers
    document = json.loads(body)
    assert document["ready"] is False and document["code"] == "unavailable"
    assert "retrying" in document["detail"]
    shard_0, shard_1 = document["shards"]["0"], document["shards"]["1"]
    assert shard_0["state"] == "retrying" and shard_0["attempts"] == 1
    assert "unreachable" in shard_0["last_error"] and 0 <= shard_0["retry_in_s"] <= 0.1
    assert shard_1 == {"state": "ready", "attempts": 0, "last_error": None, "retry_in_s": None}

    sleep.release.set()
    await asyncio.wait_for(starting, 5)
    status, _, body = await app.serve("GET", "/readyz", b"", {}, b"")
    assert status == 200
    shards = json.loads(body)["shards"]
    assert shards["0"]["state"] == "ready" and shards["0"]["attempts"] == 0
    assert "unreachable" in shards["0"]["last_error"]  # kept for the operator who asks why it was late
    metrics_text = (await app.serve("GET", "/metrics", b"", {}, b""))[2].decode()
    assert 'balance_storage_retries_total{phase="recovery",shard="0"} 3.0' in metrics_text
    await service.stop()


async def test_a_stop_while_waiting_for_the_database_ends_the_start_without_serving(tmp_path: Path) -> None:
    engine, storage, sleep = engine_on(tmp_path / "s0.db", until=10**9)
    storage.down()
    sleep.hold = True
    starting = asyncio.create_task(engine.start())
    for _ in range(200):
        if engine.state == RETRYING:
            break
        await asyncio.sleep(0.005)
    await engine.stop()
    sleep.release.set()
    await asyncio.wait_for(starting, 5)
    assert engine.state == STOPPED and not engine.ready


async def test_after_a_failed_commit_a_database_away_is_waited_for_with_the_same_backoff(tmp_path: Path) -> None:
    engine, storage, sleep = engine_on(tmp_path / "s0.db", until=5)
    await engine.start()
    assert (await engine.execute(c.CreateAccount(A, None, "partner", "US", "USD", A, 0, b"{}"))).status == 201

    async def goes_away(*_: Any) -> None:
        storage.down()  # the commit fails, and so does every call after it until up()

    storage.before("commit", goes_away)
    reply = await engine.execute(c.Credit(A, "lost", 10))
    assert reply.status == 503
    for _ in range(400):
        if engine.ready:
            break
        await asyncio.sleep(0.005)

    assert engine.ready and len(sleep.waits) == 5
    assert [seen["state"] for seen in sleep.seen] == [RETRYING] * 5
    assert engine.metrics.storage_retries.labels("0", "resync")._value.get() == 5
    retried = await engine.execute(c.Credit(A, "lost", 10))
    assert retried.status == 201 and not retried.replayed  # nothing of the failed commit was kept
    assert engine.ledger.accounts[A].balance == 10
    engine.ledger.check_invariants()
    await engine.stop()
