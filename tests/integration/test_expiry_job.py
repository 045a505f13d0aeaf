"""The expiry job (issue 16 item 5) against real SQLite files, real MariaDB and the real
RabbitMQ and NATS JetStream of this machine: a burst of 10,000 holds expiring together is
expired, each exactly once, by the engine from the job's notices; the job wrote nothing
(SQLite: opened read-only, the files unchanged; MariaDB: a user with the SELECT grant only);
with a broker configured and no job, the engine's sweep takes over past the fallback delay."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aio_pika
import asyncmy
import nats
import pytest

from balance.domain import commands as c
from balance.domain.model import HOLD_EXPIRED, HOLD_PENDING
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.expiry.brokers import AmqpNotices, NatsNotices, NoticeBroker
from balance.expiry.config import ExpiryConfig
from balance.expiry.consumer import consume, start_consumers
from balance.expiry.job import ShardExpiryJob
from balance.expiry.reader import MariaDbReader, Reader, SqliteReader
from balance.metrics import Metrics
from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.mariadb_url import connect_kwargs
from balance.storage.sqlite import SqliteShardStorage

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("BALANCE_TEST_NATS_URL", "nats://127.0.0.1:4222")
MYSQL_ROOT = os.environ.get("BALANCE_TEST_MYSQL_URL") or "mysql://root:@127.0.0.1:3306/balance_test"
ACCOUNTS = [f"EU-0-{n:016x}" for n in range(100)]
BURST = 10_000
TTL_S = 60


@dataclass
class Broker:
    name: str
    config: ExpiryConfig

    def make(self) -> NoticeBroker:
        if self.name == "amqp":
            return AmqpNotices(AMQP_URL, self.config)
        return NatsNotices(NATS_URL, self.config, "EU")


@pytest.fixture(params=["amqp", "nats"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A queue (RabbitMQ) or a stream and subjects (NATS) of this test's own, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    base = ExpiryConfig(mode="external", resend_s=60, page_rows=1000)  # the test runs the job
    if request.param == "amqp":
        config = replace(base, amqp_url=AMQP_URL, queue_prefix=f"test.expiry-due.{tag}")
    else:
        config = replace(base, nats_url=NATS_URL, nats_stream=f"TEST_EXPIRY_{tag}", subject_prefix=f"test.x{tag}")
    yield Broker(request.param, config)
    if request.param == "amqp":
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(config.queue(0))
    else:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(config.nats_stream)
        except Exception:  # noqa: BLE001 (never created: the test failed early)
            pass
        await nc.close()


def make_engine(storage: Any, clock: ManualClock) -> ShardEngine:
    """Job mode: the sweep runs often but only takes holds overdue by more than 30 s; no
    checkpoint comes by itself during the test (the holds table lags the journal)."""
    engine = ShardEngine(
        0, storage, clock=clock, sweep_interval_s=0.1, checkpoint_interval_s=3600, on_fatal=lambda exc: None
    )
    engine.expiry_fallback_s = 30.0
    return engine


async def ok(engine: ShardEngine, commands: list[c.Command]) -> None:
    for start in range(0, len(commands), 2000):
        replies = await asyncio.gather(*(engine.execute(cmd) for cmd in commands[start : start + 2000]))
        assert all(reply.status < 300 for reply in replies), [r.body for r in replies if r.status >= 300][:3]


def holds(engine: ShardEngine, status: str) -> set[tuple[str, str]]:
    return {(h.account_id, h.id) for h in engine.ledger.holds.values() if h.status == status}


def check_books(engine: ShardEngine) -> None:
    """Reserved == the sum of each account's pending holds; each currency sums to zero."""
    engine.ledger.check_invariants()
    pending: dict[str, int] = {}
    for hold in engine.ledger.holds.values():
        if hold.status == HOLD_PENDING:
            pending[hold.account_id] = pending.get(hold.account_id, 0) + hold.amount
    totals: dict[str, int] = {}
    for account in engine.ledger.accounts.values():
        assert account.reserved == pending.get(account.id, 0), account.id
        totals[account.currency] = totals.get(account.currency, 0) + account.balance
    assert totals and all(total == 0 for total in totals.values()), totals


async def burst(backend: Any, clock: ManualClock) -> tuple[ShardEngine, set[tuple[str, str]], set[tuple[str, str]]]:
    """10,000 holds expiring together (and 200 settled before: never noticed), half of them in
    the holds table (a checkpoint), half only in the journal after it; 100 holds not due.
    The engine, the due holds, the holds that must stay pending."""
    engine = make_engine(backend.make(), clock)
    await engine.start()
    await ok(engine, [c.CreateAccount(a, None, "user", "EU", "EUR", a, 0, b"{}") for a in ACCOUNTS])
    await ok(engine, [c.Credit(a, f"top-{a}", 10_000_000) for a in ACCOUNTS])
    first = [c.PlaceHold(ACCOUNTS[n % 100], f"a{n}", 1 + n % 7, TTL_S) for n in range(BURST // 2 + 100)]
    await ok(engine, first)
    await engine.stop()  # the last checkpoint: these holds are in the holds table
    engine = make_engine(backend.make(), clock)
    await engine.start()
    clock.advance(1)
    second = [c.PlaceHold(ACCOUNTS[n % 100], f"b{n}", 1 + n % 5, TTL_S) for n in range(BURST // 2 + 100)]
    later = [c.PlaceHold(ACCOUNTS[n % 100], f"later{n}", 3, 3600) for n in range(100)]
    await ok(engine, second + later)
    # Settled after the checkpoint: pending in the table (a*), or placed after it (b*).
    settle: list[c.Command] = []
    for n in range(100):
        for prefix in ("a", "b"):
            hold_id, account = f"{prefix}{n}", ACCOUNTS[n % 100]
            settle.append(c.CaptureHold(account, hold_id, 1) if n % 2 else c.ReleaseHold(account, hold_id))
    await ok(engine, settle)
    due = holds(engine, HOLD_PENDING) - {(ACCOUNTS[n % 100], f"later{n}") for n in range(100)}
    assert len(due) == BURST
    return engine, due, holds(engine, HOLD_PENDING) - due


def journal_sql(engine: ShardEngine) -> tuple[str, str]:
    """Expire rows per hold, and the journal's end."""
    return (
        "SELECT account_id, hold_id, COUNT(*) FROM journal WHERE kind = 'expire' AND op_key IS NOT NULL"
        " GROUP BY account_id, hold_id",
        "SELECT MAX(seq), COUNT(*) FROM journal",
    )


async def read_journal(storage: Any, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(storage, SqliteShardStorage):
        with sqlite3.connect(storage.path) as conn:
            return list(conn.execute(sql).fetchall())
    conn = await asyncmy.connect(
        host=storage.host, port=storage.port, user=storage.user, password=storage.password, database=storage.database
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall())
    finally:
        conn.close()


def file_state(path: Path) -> list[tuple[str, int, int, str]]:
    """The database's files: name, size, mtime and content digest."""
    found = []
    for suffix in ("", "-wal"):
        file = Path(f"{path}{suffix}")
        if file.exists():
            stat = file.stat()
            found.append((file.name, stat.st_size, stat.st_mtime_ns, hashlib.sha256(file.read_bytes()).hexdigest()))
    return found


@dataclass
class ReadOnly:
    """The job's reader and how the test proves it wrote nothing."""

    reader: Reader
    user: str | None = None

    async def drop(self) -> None:
        if self.user is not None:
            conn = await asyncmy.connect(**connect_kwargs(MYSQL_ROOT))
            async with conn.cursor() as cur:
                await cur.execute(f"DROP USER IF EXISTS '{self.user}'@'%'")
            conn.close()


async def job_reader(storage: Any) -> ReadOnly:
    if isinstance(storage, SqliteShardStorage):
        return ReadOnly(SqliteReader(storage.path))
    assert isinstance(storage, MariaDbShardStorage)
    user, password = f"exp_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    conn = await asyncmy.connect(**connect_kwargs(MYSQL_ROOT))
    async with conn.cursor() as cur:  # what docs/events.md tells the operator to run
        await cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        await cur.execute(f"GRANT SELECT ON `{storage.database}`.* TO '{user}'@'%'")
        await cur.execute(f"SHOW GRANTS FOR '{user}'@'%'")
        grants = [row[0] for row in await cur.fetchall()]
    conn.close()
    assert any("GRANT SELECT ON" in g for g in grants) and not any(
        word in g for g in grants for word in ("INSERT", "UPDATE", "DELETE", "ALL PRIVILEGES", "LOCK")
    ), grants
    return ReadOnly(MariaDbReader(storage.host, storage.port, user, password, storage.database), user)


async def assert_cannot_write(readonly: ReadOnly) -> None:
    """The job's own connection refuses a write: the database says it, not the job's code."""
    reader = readonly.reader
    with pytest.raises(Exception) as refused:  # noqa: PT011 (sqlite3 or MySQL error, wrapped)
        await reader.begin()
        try:
            await reader.fetch("DELETE FROM holds", ())
        finally:
            await reader.end()
    assert any(word in str(refused.value).lower() for word in ("readonly", "read-only", "denied", "read only")), str(
        refused.value
    )


async def wait_for(predicate: Any, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_burst_of_10000_expiring_holds_is_expired_once_each_and_the_job_writes_nothing(
    backend: Any, broker: Broker
) -> None:
    clock = ManualClock(start_us=1_790_000_000_000_000)
    engine, due, not_due = await burst(backend, clock)
    metrics = Metrics()
    readonly = await job_reader(engine.storage)
    ahead = [0.0]  # the job's clock: the engine's, moved on to test the resend alone
    job = ShardExpiryJob(
        0, "EU", readonly.reader, [broker.make()], metrics, broker.config,
        clock=lambda: clock() / 1_000_000 + ahead[0],
    )  # fmt: skip
    consumer_broker = broker.make()
    try:
        clock.advance(TTL_S + 1)  # every burst hold is 0-1 s overdue; the sweep waits 30 s
        await asyncio.sleep(0.3)  # several sweeps: they must leave the burst to the notices
        assert holds(engine, HOLD_EXPIRED) == set()
        # The writer stops as a crash would (no last checkpoint: the b* holds and the settlements
        # are in the journal only), so that nothing but the job touches the files meanwhile.
        await engine.stop(checkpoint=False)
        storage, (expired_sql, end_sql) = engine.storage, journal_sql(engine)
        end_before = await read_journal(storage, end_sql)
        files_before = file_state(storage.path) if isinstance(storage, SqliteShardStorage) else None

        started = asyncio.get_running_loop().time()
        assert await job.scan_once() == BURST  # 10 pages of 1,000 from one snapshot
        scan_s = asyncio.get_running_loop().time() - started
        lag = metrics.registry.get_sample_value("balance_expiry_lag_seconds", {"shard": "0"})
        assert lag == pytest.approx(2.0)  # the a* holds expired 2 s ago (placed 1 s before the b*)
        assert await job.scan_once() == 0  # announced within the resend interval: not again
        ahead[0] = broker.config.resend_s  # ... and once it has passed, all again (a new round)
        assert await job.scan_once() == BURST

        assert await read_journal(storage, end_sql) == end_before  # the job wrote nothing
        if files_before is not None:
            assert file_state(storage.path) == files_before
        await assert_cannot_write(readonly)

        engine = make_engine(backend.make(), clock)
        await engine.start()
        consumer = asyncio.create_task(consume(engine, consumer_broker))
        try:
            # Two rounds of notices: each hold expired by one, the other a quiet ack.
            await wait_for(lambda: handled(engine, "expired") + handled(engine, "settled") >= 2 * BURST, 60)
            await asyncio.sleep(0.2)  # nothing more comes
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        assert (handled(engine, "expired"), handled(engine, "settled")) == (BURST, BURST)
        assert handled(engine, "invalid") == handled(engine, "early") == 0
        assert holds(engine, HOLD_EXPIRED) == due
        assert holds(engine, HOLD_PENDING) == not_due
        check_books(engine)
        rows = await read_journal(storage, expired_sql)
        assert {(a, h) for a, h, _ in rows} == due and all(n == 1 for _, _, n in rows)  # none twice
        ahead[0] = 0.0
        assert await job.scan_once() == 0
        assert metrics.registry.get_sample_value("balance_expiry_lag_seconds", {"shard": "0"}) == 0.0
        print(f"\n{backend.name}/{broker.name}: scan and publish of {BURST} notices {scan_s:.2f}s")
    finally:
        await job.reader.close()
        for sink in job.sinks:
            await sink.close()
        await consumer_broker.close()
        await readonly.drop()
        await engine.stop()
    # What the database holds, recovered by a new engine: the same books.
    again = make_engine(backend.make(), clock)
    await again.start()
    try:
        assert holds(again, HOLD_PENDING) == not_due
        check_books(again)
    finally:
        await again.stop()


def handled(engine: ShardEngine, outcome: str) -> float:
    labels = {"shard": "0", "outcome": outcome}
    return engine.metrics.registry.get_sample_value("balance_expiry_notices_handled_total", labels) or 0.0


async def test_with_a_broker_but_no_job_the_sweep_expires_holds_past_the_fallback(backend: Any, broker: Broker) -> None:
    clock = ManualClock(start_us=1_790_000_000_000_000)
    engine = ShardEngine(0, backend.make(), clock=clock, sweep_interval_s=0.05, on_fatal=lambda exc: None)
    await engine.start()
    stop = start_consumers([engine], replace(broker.config, fallback_s=30.0), "EU")  # the service's wiring
    try:
        assert engine.expiry_fallback_s == 30.0
        await ok(engine, [c.CreateAccount(a, None, "user", "EU", "EUR", a, 0, b"{}") for a in ACCOUNTS[:10]])
        await ok(engine, [c.Credit(a, f"top-{a}", 1000) for a in ACCOUNTS[:10]])
        await ok(engine, [c.PlaceHold(ACCOUNTS[n % 10], f"h{n}", 10, 10) for n in range(200)])
        clock.advance(10 + 29)  # 29 s overdue: the job's business; no job runs
        await asyncio.sleep(0.4)
        assert len(holds(engine, HOLD_PENDING)) == 200
        lag = engine.metrics.registry.get_sample_value("balance_expiry_lag_seconds", {"shard": "0"})
        assert lag == pytest.approx(29.0)
        clock.advance(2)  # 31 s overdue: past the fallback, the engine expires them itself
        await wait_for(lambda: len(holds(engine, HOLD_EXPIRED)) == 200, 20)
        await wait_for(
            lambda: engine.metrics.registry.get_sample_value("balance_expiry_lag_seconds", {"shard": "0"}) == 0.0, 5
        )
        check_books(engine)
    finally:
        await stop()
        await engine.stop()


async def test_without_a_broker_the_sweep_expires_holds_as_they_fall_due(backend: Any) -> None:
    clock = ManualClock()
    engine = ShardEngine(0, backend.make(), clock=clock, sweep_interval_s=0.05, on_fatal=lambda exc: None)
    await engine.start()
    stop = start_consumers([engine], ExpiryConfig(), "EU")  # no broker: nothing started
    try:
        assert engine.expiry_fallback_s == 0.0
        await ok(engine, [c.CreateAccount(ACCOUNTS[0], None, "user", "EU", "EUR", "x", 0, b"{}")])
        await ok(engine, [c.Credit(ACCOUNTS[0], "top", 100), c.PlaceHold(ACCOUNTS[0], "h", 10, 5)])
        clock.advance(6)
        await wait_for(lambda: len(holds(engine, HOLD_EXPIRED)) == 1, 10)
        check_books(engine)
    finally:
        await stop()
        await engine.stop()


async def test_a_forged_notice_expires_nothing_before_its_time_and_nothing_of_another_shard(tmp_path: Path) -> None:
    """Whoever may publish to the notices' queue (a job whose clock runs ahead, or a hostile
    publisher) cannot expire a hold early: the engine checks the expiry by its own clock."""
    from balance.expiry.consumer import expire_noticed
    from balance.expiry.notices import Due, encode

    clock = ManualClock(start_us=1_790_000_000_000_000)
    engine = make_engine(SqliteShardStorage(tmp_path / "shard-0.db"), clock)
    await engine.start()
    try:
        await ok(engine, [c.CreateAccount("EU-0-00000000000000a1", None, "user", "EU", "EUR", "a", 0, b"{}")])
        await ok(
            engine, [c.Credit("EU-0-00000000000000a1", "fund", 100), c.PlaceHold("EU-0-00000000000000a1", "h", 40, 600)]
        )
        due = Due(clock() + 600 * 1_000_000, "EU-0-00000000000000a1", "h")
        assert await expire_noticed(engine, encode("forged-1", 0, due)) == "early"
        assert await expire_noticed(engine, encode("forged-2", 1, due)) == "invalid"  # another shard's
        assert await expire_noticed(engine, b'{"not": "a notice"}') == "invalid"
        assert holds(engine, HOLD_PENDING) == {("EU-0-00000000000000a1", "h")}
        clock.advance(601)
        assert await expire_noticed(engine, encode("due-1", 0, due)) == "expired"
        assert holds(engine, HOLD_EXPIRED) == {("EU-0-00000000000000a1", "h")}
        engine.ledger.check_invariants()
    finally:
        await engine.stop()
