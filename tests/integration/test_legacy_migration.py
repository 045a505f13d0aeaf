"""An earlier version's database opens with this version's code (issue 14 item 7), on SQLite
and MariaDB: its rows get ids, its client operation keys move to the one-per-account key
("op:<id>"), and a credit ``x`` and debit ``x`` pair that version allowed stays readable.

The rows are those main's code (e342542) wrote (``tests/fixtures/make_legacy_journal.py``
made ``legacy_journal.json``); the tables have that version's shape, and no migration mark.
What a legacy pair does: both rows are listed, each with its own id; the first (by seq) keeps
the id and replays its first answer; a replay of the second answers 409 idempotency_conflict
(its id now names the first operation)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncmy

from balance import views
from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.storage import schema
from balance.storage.mariadb import MariaDbShardStorage
from balance.storage.sqlite import SqliteShardStorage

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "legacy_journal.json").read_text())
P, C = "US-0-partner0000000", "US-0-child000000000"


def _value(value: Any) -> Any:
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value


def _rows(table: str) -> tuple[list[str], list[list[Any]]]:
    data = FIXTURE["tables"][table]
    return data["columns"], [[_value(v) for v in row] for row in data["rows"]]


def _statements(backend: str, mark: str) -> list[tuple[str, list[Any]]]:
    """Empty the tables (as an earlier version's open left them), then its rows."""
    out: list[tuple[str, list[Any]]] = []
    for table in FIXTURE["tables"]:
        if table == "history" and backend != "sqlite":
            continue
        out.append((f"DELETE FROM {table}", []))
        columns, rows = _rows(table)
        for row in rows:
            out.append((f"INSERT INTO {table} ({','.join(columns)}) VALUES ({','.join([mark] * len(row))})", row))
    return out


async def load_legacy(backend: Any) -> None:
    """The earlier version's tables (same DDL: this version adds no column) and rows."""
    storage = backend.make()
    await storage.open()
    await storage.close()
    if isinstance(storage, SqliteShardStorage):
        conn = sqlite3.connect(storage.path, isolation_level=None)
        conn.execute("BEGIN")
        for sql, args in _statements("sqlite", "?"):
            conn.execute(sql, args)
        conn.execute("COMMIT")
        conn.close()
        return
    assert isinstance(storage, MariaDbShardStorage)
    mconn = await asyncmy.connect(**storage._connect_kwargs(autocommit=True))
    try:
        async with mconn.cursor() as cur:
            for sql, args in _statements("mariadb", "%s"):
                await cur.execute(sql, args)
    finally:
        await mconn.ensure_closed()


async def started(backend: Any) -> ShardEngine:
    engine = ShardEngine(0, backend.make(), clock=ManualClock(), sweep_interval_s=3600, on_fatal=lambda exc: None)
    await engine.start()
    return engine


def stored_result(op_key: str, account_id: str = P) -> bytes:
    columns, rows = _rows("journal")
    at = {name: i for i, name in enumerate(columns)}
    (row,) = [r for r in rows if r[at["op_key"]] == op_key and r[at["account_id"]] == account_id]
    return row[at["result"]]  # type: ignore[no-any-return]


async def test_an_earlier_version_s_database_migrates_at_open(backend: Any) -> None:
    await load_legacy(backend)
    for round_ in range(2):  # migrated at the first open; the second open changes nothing more
        engine = await started(backend)
        try:
            engine.ledger.check_invariants()
            p, child = engine.ledger.accounts[P], engine.ledger.accounts[C]
            assert (p.balance, p.reserved, child.balance) == (580, 40, 125)
            history = [views.txn_view(row, 0) for row in await engine.storage.history(P, 100, None, None, None)]
            assert len(history) == 6 and len({row["id"] for row in history}) == 6
            assert all(row["id"].startswith("US-0-t") for row in history)
            pair = [
                (row["kind"], row["operation_id"], row["direction"]) for row in history if row["operation_id"] == "x"
            ]
            assert pair == [("debit", "x", "debit"), ("credit", "x", "credit")]  # newest first

            # The first of the pair keeps the id: its replay answers its first answer.
            credit = await engine.execute(c.Credit(P, "x", 1_000, "first x", b'{"k":"v"}'))
            assert (credit.status, credit.replayed, credit.body) == (201, True, stored_result("credit:x"))
            # The second's replay: the id is taken (documented); a new use of x too.
            for command in (c.Debit(P, "x", 300), c.Debit(P, "x", 1), c.PlaceHold(P, "x", 1, 60)):
                reply = await engine.execute(command)
                assert reply.status == 409 and b"idempotency_conflict" in reply.body, reply.body
            # Every other earlier operation replays as before, from its migrated key.
            replays = [
                (c.Debit(P, "too-much", 10**6), 422, stored_result("debit:too-much")),
                (c.Transfer("t1", P, C, 100, "USD"), 201, stored_result("transfer:t1")),
                (c.PlaceHold(P, "h1", 50, 3600, C), 201, stored_result("hold:h1")),
                (c.CaptureHold(P, "h1", 20), 200, stored_result("capture:h1")),
                (c.PlaceHold(P, "h2", 40, 3600), 201, stored_result("hold:h2")),
                (c.Credit(C, "x", 5), 201, stored_result("credit:x", C)),
            ]
            for command, status, body in replays:
                reply = await engine.execute(command)
                assert (reply.status, reply.replayed, reply.body) == (status, True, body), command
            assert [(p.balance, p.reserved, child.balance)] == [(580, 40, 125)]
            if round_ == 1:
                released = await engine.execute(c.ReleaseHold(P, "h2"))  # the legacy pending hold still settles
                assert released.status == 200 and not released.replayed
                assert p.reserved == 0
            engine.ledger.check_invariants()
        finally:
            await engine.stop()


def test_the_migration_statement_keeps_one_key_per_account_and_id() -> None:
    """On SQLite alone, row by row: which rows take the shared key."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, account_id TEXT, op_key TEXT, kind TEXT, op_id TEXT)")
    conn.execute("CREATE UNIQUE INDEX k ON journal (op_key, account_id)")
    rows = [
        (1, "A", "credit:x", "credit", "x"), (2, "A", "debit:x", "debit", "x"), (3, "A", "hold:x", "hold", "x"),
        (4, "B", "debit:x", "debit", "x"), (5, "A", "capture:x", "capture", "x"), (6, "A", None, "transfer", "t"),
        (7, "A", "transfer_in:A:t", "transfer", "t"), (8, "A", "transfer:t", "transfer", "t"),
    ]  # fmt: skip
    conn.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute(schema.op_keys_migration_sql("{} || {}"))
    keys = [row[0] for row in conn.execute("SELECT op_key FROM journal ORDER BY seq")]
    assert keys == ["op:x", "debit:x", "hold:x", "op:x", "capture:x", None, "transfer_in:A:t", "op:t"]
