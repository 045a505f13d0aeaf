"""MariaDB shard storage: one database per shard, InnoDB, asyncmy in the caller's event loop.

Two writer connections (autocommit off) run ``commit()``: one transaction per batch; with
``innodb_flush_log_at_trx_commit=1`` on the server an acknowledged batch is durable. Small
batches are one text packet (explicit multi-row INSERTs, then ``COMMIT``; the first INSERT opens
the transaction) on the first.
Large ones are XA branches on the two in turn, so that one batch's rows go in while the batch
before it commits; a branch is committed only after the one before it, and branches left
prepared by a crash or a lost connection are rolled back (at open, and before ``max_seq``
answers): the committed batches are always a prefix of the acknowledged order. Reads
(recovery, look-ups, history) go through a small separate pool of autocommit connections, so
they never queue behind a commit. The database user needs the XA statements, including
``XA RECOVER``.

Tables use ``utf8mb4_nopad_bin``: ids and operation keys compare byte for byte, case- and
trailing-space-sensitive, exactly as in SQLite (a case-insensitive collation would make
``op-A`` and ``op-a`` the same idempotency key and ``Acc`` and ``acc`` the same account).

The class is put together from its parts: the write path (``mariadb_writes``), the
statements it sends (``mariadb_statements``) and the read path (``mariadb_reads``); this
module opens and closes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import asyncmy
from asyncmy.constants import CLIENT

from balance.storage import schema
from balance.storage.base import FENCE_META_KEY, Fenced, StorageError
from balance.storage.mariadb_driver import DRIVER_ERRORS, FENCE_TRIP_DDL, fence_guard, translate
from balance.storage.mariadb_reads import MariaDbReads
from balance.storage.mariadb_statements import MariaDbStatements
from balance.storage.mariadb_url import parse_url
from balance.storage.mariadb_writes import MariaDbWrites, Writer

if TYPE_CHECKING:
    from balance.storage.mariadb_writes import Chained

log = logging.getLogger(__name__)

_CHARSET = "utf8mb4"
_COLLATION = "utf8mb4_nopad_bin"
# Quoted: asyncmy sends "SET sql_mode=<value>" verbatim. No NO_BACKSLASH_ESCAPES: the driver's
# escaping of bytes relies on backslash escapes.
_SQL_MODE = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'"
_SETTLE_TRIES = 50  # at open, 0.1 s apart: a crashed process's connections may still be closing
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class MariaDbShardStorage(MariaDbWrites, MariaDbStatements, MariaDbReads):
    """ShardStorage on one MariaDB database."""

    # Two commits run at once (XA branches on two connections): the expiry sweep's count of a
    # commit's own time leaves the overlap out, so it takes a smaller share (expiry_sweep).
    commits_overlap = True

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        *,
        read_pool_size: int = 4,
        connect_timeout: int = 10,
    ) -> None:
        if not _DATABASE_NAME.match(database):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern}: {database!r}")
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self._password = password
        self._read_pool_size = read_pool_size
        self._connect_timeout = connect_timeout
        self._writers = (Writer(), Writer())
        self._turn = 0  # the writer of the next XA branch
        self._shared_in: asyncio.Future[None] | None = None  # set when the last commit's shared rows are in
        self._exclusive = False  # the last commit completes transfers
        # XA branches are named after the database (hashed: a gtrid has at most 64 bytes).
        self._xid_prefix = "balance-" + hashlib.blake2b(database.encode(), digest_size=8).hexdigest() + "-"
        self._xid_numbers = itertools.count(time.time_ns())
        self._unsettled: set[str] = set()  # prepared branches of dropped connections, not decided yet
        self._orphans: set[int] = set()  # server threads of dropped connections that may hold one
        self._pool: asyncmy.Pool | None = None
        self._open = False
        self._packet_budget = 4 * 1024 * 1024  # characters per statement; set from max_allowed_packet
        self._head_cache: dict[str, tuple[str, str]] = {}
        self._chain: deque[Chained] = deque()  # small batches waiting to be sent, in order
        self._chain_runner: asyncio.Task[None] | None = None
        self._chain_last: tuple[object, bool] = (None, False)  # the last one sent: its commit task, succeeded
        # The loop it was opened in: CPython 3.11's get_running_loop() (also inside
        # current_task()) makes a getpid() system call; three per small commit were 1.4% of
        # a single-op server's samples.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner_epoch: int | None = None  # ``fence_with``: taken over at open, guarded in every commit
        self._fence_guard: str | None = None

    @property
    def password(self) -> str:
        """For a reader of the same database (the event feed's connection)."""
        return self._password

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"MariaDbShardStorage({self.user}@{self.host}:{self.port}/{self.database})"

    # ---- plumbing ------------------------------------------------------------------------

    def connection_kwargs(self) -> dict[str, Any]:
        """How to open a connection of one's own to this shard's database (autocommit): for the
        bench's bulk loader, which fills a shard server-side instead of through the writer."""
        return self._connect_kwargs(autocommit=True)

    def _connect_kwargs(self, *, database: bool = True, autocommit: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self._password,
            charset=_CHARSET,
            autocommit=autocommit,
            sql_mode=_SQL_MODE,
            connect_timeout=self._connect_timeout,
            client_flag=CLIENT.MULTI_STATEMENTS,
        )
        if database:
            kwargs["database"] = self.database
        return kwargs

    async def open(self) -> None:
        """Create the database, tables and indexes if missing; connect the writer and the read pool."""
        self._loop = asyncio.get_running_loop()
        try:
            setup = await asyncmy.connect(**self._connect_kwargs(database=False, autocommit=True))
            try:
                async with setup.cursor() as cur:
                    await cur.execute("SET SESSION sql_notes = 0")  # "already exists" is not news
                    await cur.execute(
                        f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET {_CHARSET} COLLATE {_COLLATION}"
                    )
                    await cur.execute(f"USE `{self.database}`")
                    for table, ddl in schema.TABLES.items():
                        await cur.execute(
                            f"CREATE TABLE IF NOT EXISTS `{table}` ({ddl}) "
                            f"ENGINE=InnoDB DEFAULT CHARSET={_CHARSET} COLLATE={_COLLATION}"
                        )
                    await cur.execute(  # an earlier version's holds table, keyed by (account_id, id)
                        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s"
                        " AND TABLE_NAME = 'holds' AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                        (self.database,),
                    )
                    if tuple(str(row[0]) for row in await cur.fetchall()) != schema.HOLD_KEY_COLUMNS:
                        key = ", ".join(schema.HOLD_KEY_COLUMNS)
                        await cur.execute(f"ALTER TABLE `holds` DROP PRIMARY KEY, ADD PRIMARY KEY ({key})")
                    for name, table, columns, unique in schema.indexes("mariadb"):
                        kind = "UNIQUE INDEX" if unique else "INDEX"
                        await cur.execute(f"CREATE {kind} IF NOT EXISTS `{name}` ON `{table}` ({columns})")
                    for name, table in schema.INDEXES_DROPPED:  # after their replacements exist
                        await cur.execute(f"DROP INDEX IF EXISTS `{name}` ON `{table}`")
                    added = {"journal": schema.JOURNAL_COLUMNS_ADDED, **schema.COLUMNS_ADDED}
                    for table, new_columns in added.items():  # an earlier version's database
                        for column, ddl in new_columns.items():
                            await cur.execute(f"ALTER TABLE `{table}` ADD COLUMN IF NOT EXISTS `{column}` {ddl}")
                    for (table, column), ddl in schema.COLUMNS_CHANGED.items():  # ... and its older types
                        await cur.execute(
                            "SELECT COLUMN_TYPE FROM information_schema.COLUMNS"
                            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND COLUMN_NAME = %s",
                            (self.database, table, column),
                        )
                        (found,) = await cur.fetchone()
                        if str(found).lower().replace(" ", "") != ddl.split(" ")[0].lower():
                            await cur.execute(f"ALTER TABLE `{table}` MODIFY `{column}` {ddl}")
                    await cur.execute("SELECT 1 FROM meta WHERE name = %s", (schema.OP_KEYS_META_KEY,))
                    if await cur.fetchone() is None:  # an earlier version's keys (``schema.op_keys_migration_sql``)
                        await cur.execute("START TRANSACTION")
                        await cur.execute(schema.op_keys_migration_sql("CONCAT({}, {})"))
                        await cur.execute("INSERT INTO meta (name, value) VALUES (%s, 1)", (schema.OP_KEYS_META_KEY,))
                        await cur.execute("COMMIT")
                    # No checkpoint row yet: the holds table is complete (a new or an earlier version's database).
                    # A consistent read, no locks: a branch a crash left prepared may hold some.
                    await cur.execute("SELECT COALESCE(MAX(seq), 0) FROM journal")
                    (last,) = await cur.fetchone()
                    await cur.execute(  # (not INSERT IGNORE: its "duplicate entry" warning is logged by the driver)
                        "INSERT INTO meta (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE name = name",
                        (schema.CHECKPOINT_META_KEY, int(last)),
                    )
                    await cur.execute("SELECT @@max_allowed_packet, @@innodb_flush_log_at_trx_commit")
                    max_packet, flush = await cur.fetchone()
                    if self._owner_epoch is not None and self._pool is None:  # (not when opened again)
                        await self._end_other_sessions(cur)
            finally:
                await setup.ensure_closed()
            # A character is at most 4 bytes in utf8mb4 (bytes values are sent 1:1): stay under the packet.
            self._packet_budget = max(64 * 1024, int(max_packet) // 4 - 4096)
            if int(flush) != 1:
                log.warning("%r: innodb_flush_log_at_trx_commit=%s, commits are not durable", self, flush)
            if self._pool is None:
                self._pool = await asyncmy.create_pool(
                    minsize=1, maxsize=self._read_pool_size, **self._connect_kwargs(autocommit=True)
                )
        except DRIVER_ERRORS as exc:
            await self.close()
            raise translate(exc, "open") from exc
        self._open = True
        try:
            for attempt in range(_SETTLE_TRIES):
                try:
                    await self._settle_in_doubt(every_branch_of_ours=True)
                    break
                except StorageError:
                    if attempt == _SETTLE_TRIES - 1:
                        raise
                    await asyncio.sleep(0.1)
            if self._owner_epoch is not None:
                await self._take_over(self._owner_epoch)
            await self._connection(self._writers[0])
        except StorageError:
            await self.close()
            raise

    def fence_with(self, epoch: int) -> None:
        self._owner_epoch = epoch
        self._fence_guard = fence_guard(epoch)

    async def _end_other_sessions(self, cur: Any) -> None:
        """Kill every other session on this shard's database (before ours connect): a former
        owner frozen inside a transaction would hold the fence row's shared lock, and a
        takeover would wait for it forever. Its open transactions roll back; what it had
        prepared (XA) survives and is rolled back next (``_settle_in_doubt``)."""
        await cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", (self.database,)
        )
        for (thread,) in await cur.fetchall():
            try:
                await cur.execute(f"KILL CONNECTION {int(thread)}")
            except DRIVER_ERRORS as exc:  # gone already
                log.debug("%r: KILL %s: %r", self, thread, exc)

    async def _take_over(self, epoch: int) -> None:
        """Write the epoch to the fence row unless a newer one is there (``Fenced``). The
        UPDATE waits for the commits still holding the row's shared lock (a former owner's,
        reconnected meanwhile: they land before it, so recovery, which follows, sees them)."""

        async def write(conn: asyncmy.Connection) -> int:
            async with conn.cursor() as cur:
                await cur.execute(f"CREATE TABLE IF NOT EXISTS {FENCE_TRIP_DDL} ENGINE=InnoDB")
                await cur.execute(
                    "SET STATEMENT innodb_lock_wait_timeout = 10 FOR INSERT INTO meta (name, value) VALUES (%s, %s)"
                    " ON DUPLICATE KEY UPDATE value = IF(value <= VALUES(value), VALUES(value), value)",
                    (FENCE_META_KEY, epoch),
                )
                await cur.execute("SELECT value FROM meta WHERE name = %s", (FENCE_META_KEY,))
                (found,) = await cur.fetchone()
                return int(found)

        found = await self._read(write)
        if found != epoch:
            raise Fenced(f"{self!r}: the shard is owned with epoch {found}, newer than ours ({epoch})")
        log.info("%r: taken over with epoch %d", self, epoch)

    async def close(self) -> None:
        self._open = False
        runner, self._chain_runner = self._chain_runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])
        pool, self._pool = self._pool, None
        for writer in self._writers:
            conn, writer.conn, writer.statements = writer.conn, None, {}
            if conn is not None:
                try:
                    await conn.ensure_closed()
                except Exception:  # the server may be gone already
                    conn.close()
        if pool is not None:
            pool.close()
            try:
                await pool.wait_closed()
            except Exception:
                pool.terminate()

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"{self!r} is closed")


def from_url(url: str, shard: int) -> MariaDbShardStorage:
    """``mysql://user:password@host:port/name`` -> the storage of database ``{name}_s{shard}``."""
    address = parse_url(url, shard)
    return MariaDbShardStorage(
        host=address.host,
        port=address.port,
        user=address.user,
        password=address.password,
        database=address.database,
    )
