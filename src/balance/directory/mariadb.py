"""The directory on MariaDB (``BALANCE_DIRECTORY_URL=mysql://user:password@host:port/name``).

A small pool of autocommit connections; ``FOUND_ROWS`` makes an UPDATE's count the rows it
matched (a lease renewed to the same millisecond still counts as renewed)."""

from __future__ import annotations

import re
from typing import Any

import asyncmy
from asyncmy.constants import CLIENT

from balance.directory.records import DirectoryError, NodeRecord
from balance.directory.sql import ADDED_COLUMNS, INDEXES, PLACEMENTS, TABLES, Duplicate, SqlDirectory
from balance.storage.mariadb_driver import DRIVER_ERRORS
from balance.storage.mariadb_url import parse_server, redacted

_ER_DUP_ENTRY = 1062
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class MariaDbDirectory(SqlDirectory):
    def __init__(self, url: str, *, connect_timeout: int = 5) -> None:
        server = parse_server(url)
        if not _DATABASE_NAME.match(server.database):
            raise ValueError(
                f"expected mysql://user:password@host:port/name (name: letters, digits, _), got {redacted(url)!r}"
            )
        self._server = server
        self._url = url
        self._connect_timeout = connect_timeout
        self._pool: asyncmy.Pool | None = None

    def __repr__(self) -> str:
        return f"MariaDbDirectory({redacted(self._url)})"

    def _kwargs(self) -> dict[str, Any]:
        s = self._server
        return dict(
            host=s.host, port=s.port, user=s.user, password=s.password, autocommit=True, charset="utf8mb4",
            connect_timeout=self._connect_timeout, client_flag=CLIENT.FOUND_ROWS,
        )  # fmt: skip

    async def open(self) -> None:
        try:
            conn = await asyncmy.connect(**self._kwargs())
            try:
                async with conn.cursor() as cur:
                    await cur.execute("SET SESSION sql_notes = 0")
                    await cur.execute(
                        f"CREATE DATABASE IF NOT EXISTS `{self._server.database}`"
                        " CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
                    )
                    await cur.execute(f"USE `{self._server.database}`")
                    for table, ddl in TABLES.items():
                        await cur.execute(f"CREATE TABLE IF NOT EXISTS `{table}` ({ddl}) ENGINE=InnoDB")
                    for table, column, ddl in ADDED_COLUMNS:
                        await cur.execute(f"ALTER TABLE `{table}` ADD COLUMN IF NOT EXISTS `{column}` {ddl}")
                    for index, table, column in INDEXES:
                        await cur.execute(f"CREATE INDEX IF NOT EXISTS `{index}` ON `{table}` (`{column}`)")
                    await cur.execute(
                        "INSERT IGNORE INTO directory_versions (name, value) VALUES (%s, 0)", (PLACEMENTS,)
                    )
            finally:
                await conn.ensure_closed()
            if self._pool is None:
                self._pool = await asyncmy.create_pool(minsize=1, maxsize=2, db=self._server.database, **self._kwargs())
        except DRIVER_ERRORS as exc:
            raise DirectoryError(f"{self!r}: {exc}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    async def _run(self, sql: str, args: tuple[Any, ...], fetch: bool) -> tuple[list[tuple[Any, ...]], int]:
        if self._pool is None:
            raise DirectoryError(f"{self!r} is not open")
        try:
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                count = await cur.execute(sql, args)
                rows = list(await cur.fetchall()) if fetch else []
                return rows, int(count)
        except DRIVER_ERRORS as exc:
            if exc.args and exc.args[0] == _ER_DUP_ENTRY:
                raise Duplicate(str(exc)) from exc
            raise DirectoryError(f"{self!r}: {exc}") from exc

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows, _ = await self._run(sql, args, True)
        return rows

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        _, count = await self._run(sql, args, False)
        return count

    async def _versioned(self, counter: str, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> int:
        if self._pool is None:
            raise DirectoryError(f"{self!r} is not open")
        try:
            async with self._pool.acquire() as conn:
                await conn.begin()
                try:
                    async with conn.cursor() as cur:
                        # The counter's row lock is held to the commit: the next writer waits.
                        await cur.execute("UPDATE directory_versions SET value = value + 1 WHERE name = %s", (counter,))
                        await cur.execute("SELECT value FROM directory_versions WHERE name = %s", (counter,))
                        (version,) = await cur.fetchone()
                        for sql, rows in steps:
                            await cur.executemany(sql.replace("{version}", str(int(version))), rows)
                except BaseException:
                    await conn.rollback()
                    raise
                await conn.commit()
                return int(version)
        except DRIVER_ERRORS as exc:
            raise DirectoryError(f"{self!r}: {exc}") from exc

    async def _upsert_key(self, row: tuple[Any, ...], written_at_ms: int) -> None:
        await self._execute(
            "REPLACE INTO directory_api_keys (key_hash, account_id, created_at, key_id, prefix, scopes,"
            " revoked_at, client_id, written_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*row, written_at_ms),
        )

    async def _upsert_node(self, node: NodeRecord) -> None:
        await self._execute(
            "INSERT INTO directory_nodes (id, url, region, heartbeat_at) VALUES (%s, %s, %s, %s)"
            " ON DUPLICATE KEY UPDATE url = VALUES(url), region = VALUES(region), heartbeat_at = VALUES(heartbeat_at)",
            (node.id, node.url, node.region, node.heartbeat_at_ms),
        )
