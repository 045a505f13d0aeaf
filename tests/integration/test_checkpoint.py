"""The holds and accounts tables are a checkpoint; the journal is the record (both backends).

A batch writes a hold's journal row only, and a money operation's journal row carries its
account's balance, reserved and version after it. Now and then a batch also brings the tables
up to date (pending holds upserted, finished ones deleted, accounts behind the journal
rewritten) and records the journal seq they are complete up to. Recovery loads the tables and
replays the journal after that seq. An account row is still written with its batch when no
journal row can say what changed: a new account, an update, a system account.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncmy
import pytest

from balance.domain import commands as c
from balance.domain.ids import system_account_id
from balance.domain.model import HOLD_EXPIRES_AT, KIND_FUNDING
from balance.domain.model import HOLD_FIELDS as HOLD_COLUMNS
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.storage.base import HOLD_KEY_FIRST, ShardStorage, StorageError
from balance.storage.schema import TABLES
from balance.storage.sqlite import _sqlite_type

A, B = "US-0-aaaa", "US-0-bbbb"
NEVER = 3600.0


async def started(storage: ShardStorage, checkpoint_interval_s: float) -> ShardEngine:
    engine = ShardEngine(
        0, storage, clock=ManualClock(), sweep_interval_s=3600, on_fatal=lambda exc: None,
        checkpoint_interval_s=checkpoint_interval_s,
    )  # fmt: skip
    await engine.start()
    return engine


async def ok(engine: ShardEngine, command: c.Command) -> None:
    reply = await engine.execute(command)
    assert reply.status < 300, reply.body


async def table(storage: ShardStorage) -> dict[str, tuple[Any, ...]]:
    """The holds table's pending rows by hold id."""
    return {row[1]: row for row in await storage.scan_pending_holds(HOLD_KEY_FIRST, 1000)}


async def test_recovery_is_the_checkpoint_plus_the_journal_after_it(backend: Any) -> None:
    storage = backend.make()
    engine = await started(storage, checkpoint_interval_s=0)  # every batch changing a hold checkpoints
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    await ok(engine, c.CreateAccount(B, None, "partner", "US", "USD", "b", 0, b"{}"))
    await ok(engine, c.Credit(A, "seed", 10_000))
    for hold_id, amount in (("h1", 100), ("h2", 200), ("h3", 300)):
        await ok(engine, c.PlaceHold(A, hold_id, amount, 900, destination_account_id=B if hold_id == "h3" else None))
    assert set(await table(storage)) == {"h1", "h2", "h3"}
    assert await storage.checkpoint_seq() == engine.ledger.next_seq - 1
    await ok(engine, c.CaptureHold(A, "h1", 60))
    assert set(await table(storage)) == {"h2", "h3"}  # a finished hold leaves the table
    assert engine.metrics.holds_checkpoints.labels("0")._value.get() == 4  # three holds, one capture
    checkpoint = await storage.checkpoint_seq()

    engine.checkpoint_interval_s = NEVER  # from here on only the journal knows
    await ok(engine, c.PlaceHold(A, "h4", 400, 900, description="later", metadata=b'{"k":1}'))
    await ok(engine, c.ReleaseHold(A, "h2"))
    await ok(engine, c.PlaceHold(A, "h5", 500, 900))
    await ok(engine, c.CaptureHold(A, "h5", None))
    await ok(engine, c.Credit(A, "more", 1))  # the next batch reports the holds left unsaved
    assert engine.metrics.holds_unsaved.labels("0")._value.get() == 3  # h4, h2, h5
    expected = {k: h.state() for k, h in engine.ledger.holds.items()}
    reserved = engine.ledger.accounts[A].reserved
    assert reserved == 300 + 400
    assert set(await table(storage)) == {"h2", "h3"} and await storage.checkpoint_seq() == checkpoint
    await engine.stop(checkpoint=False)  # as a crash: the next start replays the journal

    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    ledger = again.ledger
    assert {k: h.state() for k, h in ledger.holds.items() if h.status == "pending"} == {
        k: state for k, state in expected.items() if state[5] == "pending"
    }
    for key in ((A, "h2"), (A, "h5")):  # finished after the checkpoint: replayed from the journal
        assert ledger.holds[key].state() == expected[key]
    assert ledger.accounts[A].reserved == reserved
    ledger.check_invariants()
    # Every hold, pending or long finished, reads back the same from the journal.
    for (account_id, hold_id), state in expected.items():
        assert await again.storage.get_hold(account_id, hold_id) == state, hold_id

    again.checkpoint_interval_s = 0  # the next checkpoint deletes h2's stale row and adds h4
    await ok(again, c.Credit(B, "seed-b", 1))
    await ok(again, c.PlaceHold(B, "hb", 1, 900))
    assert set(await table(again.storage)) == {"h3", "h4", "hb"}
    newest = await again.storage.history(B, 1, None, None, None)  # hb's journal row
    assert await again.storage.checkpoint_seq() == newest[0][0]
    await again.stop()


async def test_a_checkpoint_that_fails_to_commit_is_written_by_the_next_one(backend: Any) -> None:
    storage = backend.make()
    engine = await started(storage, checkpoint_interval_s=NEVER)
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    await ok(engine, c.Credit(A, "seed", 10_000))
    await ok(engine, c.PlaceHold(A, "h1", 100, 900))
    await ok(engine, c.PlaceHold(A, "h2", 200, 900))
    engine.checkpoint_interval_s = 0
    await ok(engine, c.PlaceHold(A, "h3", 300, 900))  # the checkpoint: h1, h2, h3
    engine.checkpoint_interval_s = NEVER
    await ok(engine, c.CaptureHold(A, "h1", None))

    # The next checkpoint's batch fails (its commit raises before writing): undone in memory,
    # its holds become unsaved again, and the checkpoint after it writes them.
    commit = storage.commit
    failures = [1]

    async def failing(batch: Any, after: Any = None) -> None:
        if batch.checkpoint_seq and failures:
            failures.pop()
            raise StorageError("injected: the checkpoint's commit fails")
        await commit(batch, after)

    storage.commit = failing  # type: ignore[method-assign]
    engine.checkpoint_interval_s = 0
    reply = await engine.execute(c.ReleaseHold(A, "h2"))
    assert reply.status == 503
    for _ in range(200):  # the writer resyncs from storage after a failed commit
        if engine.ready:
            break
        await asyncio.sleep(0.01)
    await ok(engine, c.ReleaseHold(A, "h2"))  # retried: this checkpoint deletes h1 and h2
    assert set(await table(storage)) == {"h3"}
    assert await storage.checkpoint_seq() == engine.ledger.next_seq - 1
    await engine.stop()

    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert {k for k, h in again.ledger.holds.items() if h.status == "pending"} == {(A, "h3")}
    assert again.ledger.accounts[A].reserved == 300
    again.ledger.check_invariants()
    await again.stop()


async def _raw(backend: Any, storage: ShardStorage, statements: list[str]) -> list[tuple[Any, ...]]:
    """Run SQL on the shard's database directly (to make it look like an earlier version's);
    the rows of the last statement."""
    if backend.name == "sqlite":
        with sqlite3.connect(storage.path) as conn:  # type: ignore[attr-defined]
            for sql in statements:
                rows = conn.execute(sql).fetchall()
        return rows
    conn = await asyncmy.connect(**storage._connect_kwargs(autocommit=True))  # type: ignore[attr-defined]
    try:
        async with conn.cursor() as cur:
            for sql in statements:
                await cur.execute(sql)
            return list(await cur.fetchall() or [])
    finally:
        conn.close()


async def _indexes(backend: Any, storage: ShardStorage, table: str) -> set[str]:
    """The secondary indexes of ``table`` (SQLite's automatic ones left out)."""
    if backend.name == "sqlite":
        sql = f"SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}'"
        return {row[0] for row in await _raw(backend, storage, [sql]) if not row[0].startswith("sqlite_")}
    return {row[2] for row in await _raw(backend, storage, [f"SHOW INDEX FROM {table}"]) if row[2] != "PRIMARY"}


async def test_an_earlier_version_s_idempotency_index_is_replaced_at_open(backend: Any) -> None:
    """The unique index of operation keys was (account_id, op_key) before session 5; it is now
    (op_key, account_id), under a new name, and the old one is dropped once the new one exists."""
    engine = await started(backend.make(), checkpoint_interval_s=NEVER)
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    await ok(engine, c.Credit(A, "seed", 10))
    await engine.stop()
    on = "" if backend.name == "sqlite" else " ON journal"
    await _raw(backend, engine.storage, [
        f"DROP INDEX journal_key{on}", "CREATE UNIQUE INDEX journal_op_key ON journal (account_id, op_key)",
    ])  # fmt: skip
    history = {"journal_history"} if backend.name == "mariadb" else set()  # SQLite: a table (below)
    assert await _indexes(backend, engine.storage, "journal") == {"journal_op_key", *history}

    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert await _indexes(backend, again.storage, "journal") == {"journal_key", *history}
    replay = await again.execute(c.Credit(A, "seed", 10))  # the first outcome, read back through the new index
    assert replay.status == 201 and replay.replayed
    await again.stop()


async def test_an_earlier_version_s_holds_table_is_keyed_by_expiry_at_open(backend: Any) -> None:
    """The holds table keeps pending holds only, keyed by (expires_at, account_id, id): a round's
    new holds go in at one end of it. An earlier version's table, keyed by (account_id, id) with
    ``holds_by_status`` and ``holds_by_expiry``, is keyed anew at open (both indexes dropped), and
    its pending holds still load, the finished rows it may hold left aside."""
    engine = await started(backend.make(), checkpoint_interval_s=NEVER)
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    await ok(engine, c.Credit(A, "seed", 1000))
    for k, expiry_s in enumerate((3600, 60, 600)):  # expiring in the order h1, h2, h0
        await ok(engine, c.PlaceHold(A, f"h{k}", 100, expiry_s))
    await engine.stop()  # the last checkpoint writes the three pending holds
    old_ddl = TABLES["holds"].replace("PRIMARY KEY (expires_at, account_id, id)", "PRIMARY KEY (account_id, id)")
    assert old_ddl != TABLES["holds"]
    if backend.name == "sqlite":
        old_ddl = _sqlite_type(old_ddl)  # (a table by rowid, as the earlier version made it)
    # An earlier version kept finished holds' rows: h0's, as a finished hold "h-old".
    finished_h0 = [{"id": "'h-old'", "status": "'captured'"}.get(column, column) for column in HOLD_COLUMNS]
    columns = ",".join(HOLD_COLUMNS)
    await _raw(backend, engine.storage, [
        "ALTER TABLE holds RENAME TO holds_now",
        f"CREATE TABLE holds ({old_ddl})",
        f"INSERT INTO holds ({columns}) SELECT {columns} FROM holds_now",
        "DROP TABLE holds_now",
        "CREATE INDEX holds_by_status ON holds (status, account_id, id)",
        "CREATE INDEX holds_by_expiry ON holds (status, expires_at, account_id, id)",
        f"INSERT INTO holds ({columns}) SELECT {','.join(finished_h0)} FROM holds WHERE id = 'h0'",
    ])  # fmt: skip
    assert await _indexes(backend, engine.storage, "holds") == {"holds_by_status", "holds_by_expiry"}
    assert await _hold_key(backend, engine.storage) == ["account_id", "id"]

    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert await _indexes(backend, again.storage, "holds") == set()
    assert await _hold_key(backend, again.storage) == ["expires_at", "account_id", "id"]
    pages, after = [], HOLD_KEY_FIRST
    while page := await again.storage.scan_pending_holds(after, 1):
        pages.append(page[0][1])
        after = (page[0][HOLD_EXPIRES_AT], page[0][0], page[0][1])
    assert pages == ["h1", "h2", "h0"]
    assert {hold.id for _, hold in again.ledger.holds.items() if hold.status == "pending"} == {"h0", "h1", "h2"}
    await ok(again, c.CaptureHold(A, "h1", None))  # finished: the next checkpoint deletes its row by key
    await again.stop()
    reader = backend.make()
    await reader.open()
    assert [row[1] for row in await reader.scan_pending_holds(HOLD_KEY_FIRST, 10)] == ["h2", "h0"]
    await reader.close()


async def _hold_key(backend: Any, storage: ShardStorage) -> list[str]:
    """The holds table's primary key columns, in order."""
    if backend.name == "sqlite":
        rows = await _raw(backend, storage, ["SELECT name, pk FROM pragma_table_info('holds') WHERE pk > 0"])
        return [name for name, _ in sorted(rows, key=lambda row: row[1])]
    rows = await _raw(backend, storage, ["SHOW INDEX FROM holds WHERE Key_name = 'PRIMARY'"])
    return [row[4] for row in sorted(rows, key=lambda row: row[3])]


async def _history(storage: ShardStorage, account_id: str, limit: int = 1000, **filters: int) -> list[int]:
    before, since, until = filters.get("before"), filters.get("since"), filters.get("until")
    return [row[0] for row in await storage.history(account_id, limit, before, since, until)]


async def test_history_reads_the_same_across_checkpoints(backend: Any) -> None:
    """SQLite keeps an account's history in a table filled at each checkpoint, and reads the
    journal after the checkpoint for the rest: every answer must be what one index over the
    whole journal gives (MariaDB's), whatever side of a checkpoint its rows are on."""
    clock = ManualClock()
    engine = ShardEngine(
        0, backend.make(), clock=clock, sweep_interval_s=3600, on_fatal=lambda exc: None, checkpoint_interval_s=NEVER
    )  # fmt: skip
    await engine.start()
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    await ok(engine, c.CreateAccount(B, None, "partner", "US", "USD", "b", 0, b"{}"))
    for k in range(1, 31):
        clock.advance(1)
        engine.checkpoint_interval_s = 0 if k in (10, 20) else NEVER  # these batches checkpoint
        await ok(engine, c.Credit(A if k % 3 else B, f"cr-{k}", 10))
        if k == 12:
            refused = await engine.execute(c.Debit(A, "too-much", 10**9))  # refused: not in the history
            assert refused.status >= 400
    storage = engine.storage
    assert 0 < await storage.checkpoint_seq() < engine.ledger.next_seq - 1  # rows on both sides of it
    everything = await _history(storage, A)
    assert len(everything) == 20 and everything == sorted(everything, reverse=True)
    cut = await storage.checkpoint_seq()
    assert min(everything) < cut < max(everything)
    assert await _history(storage, A, limit=5) == everything[:5]
    assert await _history(storage, A, limit=15) == everything[:15]  # across the checkpoint
    assert await _history(storage, A, before=cut + 1) == [s for s in everything if s <= cut]
    assert await _history(storage, A, limit=3, before=everything[8]) == everything[9:12]
    stamps = {row[0]: row[15] for row in await storage.history(A, 1000, None, None, None)}
    middle = stamps[everything[10]]
    assert await _history(storage, A, since=middle) == [s for s in everything if stamps[s] >= middle]
    assert await _history(storage, A, until=middle) == [s for s in everything if stamps[s] < middle]
    assert len(await _history(storage, B)) == 10
    await engine.stop()  # the last checkpoint: everything in the history table now
    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert await _history(again.storage, A) == everything
    await again.stop()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # SQLite only: MariaDB keeps its (account_id, seq) index
async def test_an_earlier_version_s_sqlite_history_index_becomes_the_history_table(backend: Any) -> None:
    """An earlier version's SQLite journal had a (account_id, seq) index and no history table:
    at open the pairs up to the checkpoint are copied into the table and the index dropped."""
    assert backend.name == "sqlite"
    engine = await started(backend.make(), checkpoint_interval_s=NEVER)
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    for k in range(5):
        await ok(engine, c.Credit(A, f"cr-{k}", 10))
    expected = await _history(engine.storage, A)
    await engine.stop()
    await _raw(backend, engine.storage, [
        "DROP TABLE history", "CREATE INDEX journal_history ON journal (account_id, seq)",
    ])  # fmt: skip
    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert await _indexes(backend, again.storage, "journal") == {"journal_key"}
    assert len(expected) == 5 and await _history(again.storage, A) == expected
    await again.stop()


async def test_a_database_of_the_earlier_version_opens_with_its_holds_table_taken_as_complete(backend: Any) -> None:
    """Before session 4 the holds table had every hold, and journal rows had no expiry: such
    a database gets the new columns at open, its holds table counts as a checkpoint up to the
    journal's end, and its finished holds are read from the table."""
    engine = await started(backend.make(), checkpoint_interval_s=0)
    await ok(engine, c.CreateAccount(A, None, "partner", "US", "USD", "a", 0, b"{}"))
    await ok(engine, c.Credit(A, "seed", 10_000))
    await ok(engine, c.PlaceHold(A, "open", 100, 900))
    await ok(engine, c.PlaceHold(A, "done", 200, 900))
    await ok(engine, c.CaptureHold(A, "done", 150))
    done = engine.ledger.holds[A, "done"].state()
    await engine.stop()
    values = ",".join(f"X'{v.hex()}'" if isinstance(v, bytes) else "NULL" if v is None else repr(v) for v in done)
    await _raw(backend, engine.storage, [
        f"INSERT INTO holds VALUES ({values})",  # the earlier version kept finished holds
        "ALTER TABLE journal DROP COLUMN expires_at",
        "ALTER TABLE journal DROP COLUMN destination_account_id",
        "DROP TABLE meta",
    ])  # fmt: skip

    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert {k for k, h in again.ledger.holds.items() if h.status == "pending"} == {(A, "open")}
    assert again.ledger.accounts[A].reserved == 100
    assert await again.storage.checkpoint_seq() == again.ledger.next_seq - 1
    assert await again.storage.get_hold(A, "done") == done  # from the table: the journal has no expiry
    await ok(again, c.ReleaseHold(A, "open"))
    await again.stop(checkpoint=False)
    third = await started(backend.make(), checkpoint_interval_s=NEVER)  # the release replayed from the journal
    assert third.ledger.holds[A, "open"].status == "released" and third.ledger.accounts[A].reserved == 0
    third.ledger.check_invariants()
    await third.stop()


C = "US-0-cccc"


async def stored(storage: ShardStorage) -> dict[str, tuple[Any, ...]]:
    """The accounts table's rows by id, ``exhausted`` as a bool."""
    return {row[0]: (*row[:10], bool(row[10]), *row[11:]) for row in await storage.scan_accounts("", 1000)}


async def test_recovery_is_the_accounts_checkpoint_plus_the_journal_after_it(backend: Any) -> None:
    engine = await started(backend.make(), checkpoint_interval_s=NEVER)
    for account_id in (A, B, C):
        await ok(engine, c.CreateAccount(account_id, None, "user", "US", "USD", account_id, 0, b"{}"))
    created = await stored(engine.storage)
    assert {A, B, C} <= set(created)

    await ok(engine, c.Credit(A, "seed", 1_000))
    await ok(engine, c.Credit(B, "seed", 500))
    await ok(engine, c.Transfer("t1", A, B, 100, "USD"))
    await ok(engine, c.PlaceHold(A, "h1", 200, 900, destination_account_id=C))
    await ok(engine, c.CaptureHold(A, "h1", 150))  # a second journal row, on C
    await ok(engine, c.Debit(B, "d1", 50))
    await ok(engine, c.PlaceHold(B, "h2", 550, 900))  # leaves nothing available: exhausted
    await ok(engine, c.UpdateAccount(C, name="renamed"))  # written at once ...
    await ok(engine, c.Credit(C, "more", 7))  # ... and behind the journal again
    ledger = engine.ledger
    assert ledger.accounts[B].exhausted
    table = await stored(engine.storage)
    assert table[A] == created[A] and table[B] == created[B]  # only the journal knows A and B now
    assert table[C][5] == "renamed" and table[C][7] == 150  # the update's row; not the last credit
    funding = system_account_id(0, "USD", KIND_FUNDING)
    assert table[funding] == ledger.accounts[funding].state()  # system accounts: every batch
    assert engine.metrics.accounts_unsaved.labels("0")._value.get() >= 2
    live = {account_id: account.state() for account_id, account in ledger.accounts.items()}
    await engine.stop(checkpoint=False)  # as a crash: the next start replays the journal

    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert {account_id: account.state() for account_id, account in again.ledger.accounts.items()} == live
    again.ledger.check_invariants()
    again.checkpoint_interval_s = 0  # the next batch writes every account behind the journal
    await ok(again, c.ReleaseHold(B, "h2"))  # the flag lifts
    live = {account_id: account.state() for account_id, account in again.ledger.accounts.items()}
    assert not again.ledger.accounts[B].exhausted
    assert await stored(again.storage) == live
    newest = await again.storage.history(B, 1, None, None, None)  # the release's journal row
    assert await again.storage.checkpoint_seq() == newest[0][0]
    again.checkpoint_interval_s = NEVER
    await ok(again, c.Credit(A, "after", 3))
    await ok(again, c.PlaceHold(A, "h3", 5, 900))
    live = {account_id: account.state() for account_id, account in again.ledger.accounts.items()}
    holds = {k: h.state() for k, h in again.ledger.holds.items() if h.status == "pending"}
    assert await stored(again.storage) != live
    await again.stop()  # a clean stop writes a last checkpoint: the tables are complete
    reader = backend.make()
    await reader.open()
    assert await stored(reader) == live
    assert {(row[0], row[1]): row for row in await reader.scan_pending_holds(HOLD_KEY_FIRST, 100)} == holds
    newest = await reader.history(A, 1, None, None, None)
    assert await reader.checkpoint_seq() == newest[0][0]
    await reader.close()

    third = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert {account_id: account.state() for account_id, account in third.ledger.accounts.items()} == live
    await third.stop()
