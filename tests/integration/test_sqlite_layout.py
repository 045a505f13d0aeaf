"""SQLite keeps the accounts table in id order (WITHOUT ROWID): a checkpoint round writes
accounts in id order, a slice per commit, and a slice then lands on a page or two instead of a
page per account. An earlier version's table, by rowid, is rebuilt at open with every row."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from balance.domain import commands as c
from balance.engine.clock import ManualClock
from balance.engine.shard import ShardEngine
from balance.storage.sqlite import SqliteShardStorage

NEVER = 3600.0


def _layout(path: Path) -> tuple[str, set[str]]:
    with sqlite3.connect(path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'accounts'").fetchone()[0]
        indexes = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'accounts'")
        }
    return sql, {name for name in indexes if not name.startswith("sqlite_")}


async def _engine(path: Path) -> ShardEngine:
    engine = ShardEngine(
        0, SqliteShardStorage(path), clock=ManualClock(), sweep_interval_s=NEVER, on_fatal=lambda exc: None,
        checkpoint_interval_s=NEVER,
    )  # fmt: skip
    await engine.start()
    return engine


async def test_a_new_database_keeps_accounts_in_id_order(tmp_path: Path) -> None:
    engine = await _engine(tmp_path / "s0.db")
    await engine.stop()
    sql, indexes = _layout(tmp_path / "s0.db")
    assert "WITHOUT ROWID" in sql.upper() and indexes == {"accounts_by_parent"}


async def test_an_earlier_version_s_accounts_table_is_rebuilt_in_id_order_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s0.db"
    engine = await _engine(path)
    for k in range(5):
        reply = await engine.execute(c.CreateAccount(f"US-0-{k:04d}", None, "partner", "US", "USD", f"a{k}", 0, b"{}"))
        assert reply.status == 201
        assert (await engine.execute(c.Credit(f"US-0-{k:04d}", f"seed-{k}", 100 + k))).status == 201
    await engine.stop()  # the last checkpoint writes the accounts' rows
    with sqlite3.connect(path) as conn:  # as an earlier version made the table: by rowid
        columns = ",".join(row[1] for row in conn.execute("PRAGMA table_info(accounts)"))
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'accounts'").fetchone()[0]
        conn.execute("ALTER TABLE accounts RENAME TO accounts_old")
        conn.execute(re.sub(r"\)\s*WITHOUT ROWID\s*$", ")", ddl, flags=re.IGNORECASE))
        conn.execute(f"INSERT INTO accounts ({columns}) SELECT {columns} FROM accounts_old")
        conn.execute("DROP TABLE accounts_old")
        conn.execute("CREATE INDEX accounts_by_parent ON accounts (parent_id, id)")
    sql, _ = _layout(path)
    assert "WITHOUT ROWID" not in sql.upper()

    again = await _engine(path)
    try:
        sql, indexes = _layout(path)
        assert "WITHOUT ROWID" in sql.upper() and indexes == {"accounts_by_parent"}
        balances = {k: again.ledger.accounts[f"US-0-{k:04d}"].balance for k in range(5)}
        assert balances == {k: 100 + k for k in range(5)}
        again.ledger.check_invariants()
        assert (await again.execute(c.Debit("US-0-0003", "spend", 3))).status == 201
    finally:
        await again.stop()
