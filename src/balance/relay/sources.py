"""Reading a shard database for events: SQLite (its own connection, in a thread of its own)
and MariaDB (its own connection). One read transaction per page, so the page and what it needs
come from one snapshot; the cursor and the outbox's pruning are one small write."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from balance.domain.model import HOLD
from balance.events.stream import placement_keys
from balance.relay.page import EventSource, Missing, Page, Row
from balance.storage import event_reads as q
from balance.storage.base import StorageError

Query = tuple[str, tuple[Any, ...]]
PLACEMENTS_PER_QUERY = 250  # (op key, account) pairs OR-ed in one read of hold placements


def _page_queries(p: str, after: int, limit: int, missing: Missing) -> Generator[Query, list[Row], Page]:
    """The page's reads, one after another (each driver runs them in one snapshot): yields a
    query, is sent its rows, returns the page."""
    journal = yield q.sql(q.JOURNAL_PAGE, p), (after, limit)
    outbox = yield q.sql(q.OUTBOX_PAGE, p), (after, limit)
    journal, outbox = q.within(list(journal), list(outbox), limit)
    page = Page(journal, outbox)
    accounts, holds = missing(journal)
    if accounts:
        ids = sorted(accounts)
        page.accounts = list((yield q.accounts_by_id(p, len(ids)), tuple(ids)))
        page.later_updates = list((yield q.updates_after(p, len(ids)), (*ids, after)))
    if holds:
        pairs: list[Any] = []
        for account_id, hold_id in sorted(holds):
            for key in placement_keys(account_id, hold_id):
                pairs += [key, account_id]
        page.placements = []
        step = 2 * PLACEMENTS_PER_QUERY
        for start in range(0, len(pairs), step):  # SQLite refuses an expression deeper than 1,000 terms
            chunk = pairs[start : start + step]
            rows = yield q.placements(p, len(chunk) // 2), tuple(chunk)
            page.placements += [row for row in rows if row[3] == HOLD]
    return page


def _run_sync(queries: Generator[Query, list[Row], Page], execute: Callable[[str, tuple[Any, ...]], list[Row]]) -> Page:
    try:
        query = next(queries)
        while True:
            query = queries.send(execute(*query))
    except StopIteration as done:
        page: Page = done.value
        return page


class SqliteEventSource:
    """A shard's SQLite file, read (and its cursor written) by a connection of its own."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"events-{self.path.stem}")
        self._conn: sqlite3.Connection | None = None
        self.read_only = read_only  # another process's shard: its cursor read only (``ShardRelay.barrier_sources``)

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def call() -> Any:
            if self._conn is None:
                if not self.path.exists():
                    raise sqlite3.OperationalError(f"{self.path} does not exist yet")
                target: Path | str = f"{self.path.absolute().as_uri()}?mode=ro" if self.read_only else self.path
                self._conn = sqlite3.connect(
                    target, isolation_level=None, check_same_thread=False, timeout=30, uri=self.read_only
                )
                self._conn.execute("PRAGMA busy_timeout=30000")
                # Its one write (the cursor, now and then) holds the shard's write lock as short as it
                # can: no sync of its own (the writer's next commit syncs the WAL). A cursor lost to a
                # power cut only publishes some events again (at least once).
                self._conn.execute("PRAGMA synchronous=OFF")
            return fn(self._conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite events: {exc}") from exc

    async def open(self) -> None:
        """Connects on first use (the service creates the file)."""

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)

    async def read_page(self, after: int, limit: int, missing: Missing) -> Page:
        def read(conn: sqlite3.Connection) -> Page:
            conn.execute("BEGIN")
            try:
                return _run_sync(
                    _page_queries("?", after, limit, missing), lambda sql, a: conn.execute(sql, a).fetchall()
                )
            finally:
                conn.execute("COMMIT")

        page: Page = await self._run(read)
        return page

    async def cursor(self, sink: str) -> int:
        row = await self._run(lambda conn: conn.execute(q.sql(q.CURSOR, "?"), (q.cursor_name(sink),)).fetchone())
        return int(row[0]) if row else 0

    async def save_cursor(self, sink: str, seq: int, prune_seq: int, prune_before_us: int) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (q.cursor_name(sink), seq))
                if prune_seq:
                    conn.execute(q.sql(q.PRUNE, "?"), (prune_seq, prune_before_us))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._run(save)

    async def oldest_after(self, after: int) -> int | None:
        row = await self._run(lambda conn: conn.execute(q.sql(q.OLDEST_AFTER, "?"), (after, after)).fetchone())
        return None if row is None or row[0] is None else int(row[0])

    async def max_seq(self) -> int:
        row = await self._run(lambda conn: conn.execute(q.MAX_SEQ).fetchone())
        return int(row[0] or 0)


class MariaDbEventSource:
    """A shard's MariaDB database, through a connection of its own."""

    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self._connect_kwargs = {"host": host, "port": port, "user": user, "password": password, "database": database}
        self._conn: Any = None
        # One connection, one query at a time: the relays of a shard's sinks share this source,
        # and a cursor saved while a page is read would interleave two exchanges on one socket
        # (each then waits for the other's answer: a hang).
        self._using = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, shard: int) -> MariaDbEventSource:
        from balance.storage.mariadb_url import parse_url

        address = parse_url(url, shard)
        return cls(address.host, address.port, address.user, address.password, address.database)

    async def _connection(self) -> Any:
        if self._conn is None:
            import asyncmy

            self._conn = await asyncmy.connect(**self._connect_kwargs, autocommit=True, connect_timeout=5)
        return self._conn

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        from balance.storage.mariadb_driver import DRIVER_ERRORS

        try:
            async with self._using:
                conn = await self._connection()
                try:
                    return await fn(conn)
                except asyncio.CancelledError:  # cut mid-exchange: the socket's state is unknown
                    conn, self._conn = self._conn, None
                    if conn is not None:
                        conn.close()
                    raise
        except DRIVER_ERRORS as exc:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            raise StorageError(f"mariadb events: {exc!r}") from exc

    async def open(self) -> None:
        """Connects on first use."""

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def read_page(self, after: int, limit: int, missing: Missing) -> Page:
        async def read(conn: Any) -> Page:
            async with conn.cursor() as cur:
                await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                try:
                    queries = _page_queries("%s", after, limit, missing)
                    try:
                        query = next(queries)
                        while True:
                            await cur.execute(*query)
                            query = queries.send(list(await cur.fetchall()))
                    except StopIteration as done:
                        page: Page = done.value
                finally:
                    await cur.execute("COMMIT")
            return page

        page: Page = await self._run(read)
        return page

    async def cursor(self, sink: str) -> int:
        async def read(conn: Any) -> int:
            async with conn.cursor() as cur:
                await cur.execute(q.sql(q.CURSOR, "%s"), (q.cursor_name(sink),))
                row = await cur.fetchone()
            return int(row[0]) if row else 0

        value: int = await self._run(read)
        return value

    async def save_cursor(self, sink: str, seq: int, prune_seq: int, prune_before_us: int) -> None:
        async def save(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute("START TRANSACTION")
                await cur.execute(
                    "INSERT INTO meta (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE value = VALUES(value)",
                    (q.cursor_name(sink), seq),
                )
                if prune_seq:
                    await cur.execute(q.sql(q.PRUNE, "%s"), (prune_seq, prune_before_us))
                await cur.execute("COMMIT")

        await self._run(save)

    async def oldest_after(self, after: int) -> int | None:
        async def read(conn: Any) -> int | None:
            async with conn.cursor() as cur:
                await cur.execute(q.sql(q.OLDEST_AFTER, "%s"), (after, after))
                row = await cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        value: int | None = await self._run(read)
        return value

    async def max_seq(self) -> int:
        async def read(conn: Any) -> int:
            async with conn.cursor() as cur:
                await cur.execute(q.MAX_SEQ)
                row = await cur.fetchone()
            return int(row[0] or 0)

        value: int = await self._run(read)
        return value


def source_of(storage: object) -> EventSource:
    """The event source of the database a shard engine writes to (the HTTP feed's reads)."""
    from balance.storage.sqlite import SqliteShardStorage

    if isinstance(storage, SqliteShardStorage):
        return SqliteEventSource(storage.path)
    from balance.storage.mariadb import MariaDbShardStorage

    if isinstance(storage, MariaDbShardStorage):
        return MariaDbEventSource(storage.host, storage.port, storage.user, storage.password, storage.database)
    inner = getattr(storage, "inner", None)  # a storage wrapped by a test's fault injection
    if inner is not None:
        return source_of(inner)
    raise TypeError(f"no event source for {type(storage).__name__}")
