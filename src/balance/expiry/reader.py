"""The expiry job's read of a shard database: one snapshot per scan, pages of bounded size,
through a connection that cannot write.

SQLite: the file opened ``mode=ro`` (a URI); the scan is one read transaction (WAL: it never
blocks the writer). MariaDB: a user the operator grants ``SELECT`` only
(``BALANCE_EXPIRY_DB_URL``), each scan in ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ
ONLY``: plain consistent reads, no row locks. What is read and why: ``notices``."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from balance.expiry.notices import Due, Tail
from balance.storage import expiry_reads as q
from balance.storage.base import StorageError

Rows = list[tuple[Any, ...]]


class Reader(Protocol):
    placeholder: str

    async def begin(self) -> None: ...
    async def fetch(self, sql: str, args: tuple[Any, ...]) -> Rows: ...
    async def end(self) -> None: ...
    async def close(self) -> None: ...


async def scan(reader: Reader, now: int, page_rows: int) -> AsyncGenerator[list[Due], None]:
    """The pending holds past their expiry as of ``now`` (microseconds), in pages of at most
    ``page_rows``, all from one snapshot: first those placed after the checkpoint (the journal's
    tail), then the checkpoint's, oldest expiry first."""
    p = reader.placeholder
    await reader.begin()
    try:
        rows = await reader.fetch(q.CHECKPOINT, ())
        after = int(rows[0][0]) if rows else 0
        tail = Tail()
        while True:
            rows = await reader.fetch(q.sql(q.TAIL_PAGE, p), (after, page_rows))
            tail.add(rows)
            if len(rows) < page_rows:
                break
            after = int(rows[-1][0])
        early = tail.due(now)
        for start in range(0, len(early), page_rows):
            yield early[start : start + page_rows]
        last: tuple[int, str, str] = (-(2**62), "", "")
        while True:
            rows = await reader.fetch(q.sql(q.DUE_PAGE, p), q.due_args(now, last, page_rows))
            page = [Due(int(e), a, h) for e, a, h in rows if not tail.knows(a, h)]
            if page:
                yield page
            if len(rows) < page_rows:
                return
            last = (int(rows[-1][0]), rows[-1][1], rows[-1][2])
    finally:
        await reader.end()


class SqliteReader:
    """A shard's SQLite file, opened read-only, in a thread of its own."""

    placeholder = "?"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"expiry-{self.path.stem}")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.exists():
                raise sqlite3.OperationalError(f"{self.path} does not exist yet")
            uri = self.path.as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA query_only=ON")
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(self._connection()))
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite expiry job: {exc}") from exc

    async def begin(self) -> None:
        await self._run(lambda conn: conn.execute("BEGIN"))

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> Rows:
        rows: Rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return rows

    async def end(self) -> None:
        def end(conn: sqlite3.Connection) -> None:
            if conn.in_transaction:
                conn.execute("COMMIT")

        if self._conn is not None:
            await self._run(end)

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)


class MariaDbReader:
    """A shard's MariaDB database, as a user that may only SELECT."""

    placeholder = "%s"

    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self._connect_kwargs = {"host": host, "port": port, "user": user, "password": password, "database": database}
        self._conn: Any = None

    @classmethod
    def from_url(cls, url: str, shard: int) -> MariaDbReader:
        from balance.storage.mariadb_url import parse_url

        address = parse_url(url, shard)
        return cls(address.host, address.port, address.user, address.password, address.database)

    async def _run(self, sql: str, args: tuple[Any, ...]) -> Rows:
        from balance.storage.mariadb_driver import DRIVER_ERRORS

        try:
            if self._conn is None:
                import asyncmy

                self._conn = await asyncmy.connect(**self._connect_kwargs, autocommit=True, connect_timeout=5)
            async with self._conn.cursor() as cur:
                await cur.execute(sql, args or None)
                return list(await cur.fetchall())
        except DRIVER_ERRORS as exc:
            await self.close()
            raise StorageError(f"mariadb expiry job: {exc!r}") from exc

    async def begin(self) -> None:
        await self._run("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY", ())

    async def fetch(self, sql: str, args: tuple[Any, ...]) -> Rows:
        return await self._run(sql, args)

    async def end(self) -> None:
        if self._conn is not None:
            await self._run("COMMIT", ())

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
