"""The embedded directory: one SQLite file (``directory.db`` in the data directory).

Statements are short and rare (leases every second or so, operator commands): each runs in
a worker thread on a connection of its own, in its own transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from balance.directory.records import DirectoryError, NodeRecord
from balance.directory.sql import ADDED_COLUMNS, INDEXES, PLACEMENTS, TABLES, Duplicate, SqlDirectory

FILE_NAME = "directory.db"


class SqliteDirectory(SqlDirectory):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SqliteDirectory({self.path})"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    async def open(self) -> None:
        def create() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                for table, ddl in TABLES.items():
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl})")
                for table, column, ddl in ADDED_COLUMNS:
                    if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
                for index, table, column in INDEXES:
                    conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({column})")
                conn.execute("INSERT OR IGNORE INTO directory_versions (name, value) VALUES (?, 0)", (PLACEMENTS,))
            finally:
                conn.close()

        await self._in_thread(create)

    async def close(self) -> None:
        """Nothing stays open between statements."""

    async def _in_thread(self, fn: Any) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except sqlite3.IntegrityError as exc:
            raise Duplicate(str(exc)) from exc
        except sqlite3.Error as exc:
            raise DirectoryError(f"directory {self.path}: {exc}") from exc

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def query() -> list[tuple[Any, ...]]:
            conn = self._connect()
            try:
                return conn.execute(sql.replace("%s", "?"), args).fetchall()
            finally:
                conn.close()

        rows: list[tuple[Any, ...]] = await self._in_thread(query)
        return rows

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        def execute() -> int:
            conn = self._connect()
            try:
                return conn.execute(sql.replace("%s", "?"), args).rowcount
            finally:
                conn.close()

        matched: int = await self._in_thread(execute)
        return matched

    async def _versioned(self, counter: str, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> int:
        def write() -> int:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("UPDATE directory_versions SET value = value + 1 WHERE name = ?", (counter,))
                    (version,) = conn.execute(
                        "SELECT value FROM directory_versions WHERE name = ?", (counter,)
                    ).fetchone()
                    for sql, rows in steps:
                        conn.executemany(sql.replace("{version}", str(int(version))).replace("%s", "?"), rows)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return int(version)
            finally:
                conn.close()

        version: int = await self._in_thread(write)
        return version

    async def _upsert_key(self, row: tuple[Any, ...], written_at_ms: int) -> None:
        await self._execute(
            "INSERT OR REPLACE INTO directory_api_keys (key_hash, account_id, created_at, key_id, prefix, scopes,"
            " revoked_at, client_id, written_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*row, written_at_ms),
        )

    async def _upsert_node(self, node: NodeRecord) -> None:
        await self._execute(
            "INSERT INTO directory_nodes (id, url, region, heartbeat_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET url = excluded.url, region = excluded.region,"
            " heartbeat_at = excluded.heartbeat_at",
            (node.id, node.url, node.region, node.heartbeat_at_ms),
        )
