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
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncmy
from asyncmy import errors as mysql_errors
from asyncmy.constants import CLIENT

from balance.domain.holds import HOLD_JOURNAL_ACCOUNT_ID, HOLD_JOURNAL_HOLD_ID, HOLD_KINDS, hold_from_journal
from balance.domain.ids import op_key_of
from balance.domain.model import ACCOUNT_EXHAUSTED, HOLD_ACCOUNT_ID, HOLD_ID
from balance.storage import schema
from balance.storage.base import (
    EARLIER_FAILED,
    BatchWrite,
    DuplicateOperation,
    LoadedShard,
    Row,
    StorageError,
    StoredOperation,
    succeeded,
)
from balance.storage.sqltext import row_values

T = TypeVar("T")
log = logging.getLogger(__name__)

_CHUNK = 1000  # rows per multi-row INSERT
_LOOKUP_CHUNK = 500  # keys per look-up query
_CHARSET = "utf8mb4"
_COLLATION = "utf8mb4_nopad_bin"
# Quoted: asyncmy sends "SET sql_mode=<value>" verbatim. No NO_BACKSLASH_ESCAPES: the driver's
# escaping of bytes relies on backslash escapes.
_SQL_MODE = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO'"
_IDLE_PING = 10.0  # seconds: a writer idle longer is pinged (and reconnected) before BEGIN
_ER_DUP_ENTRY = 1062
_ER_XAER_NOTA = 1397  # unknown XID: decided already, or still attached to its connection
_ACTIVE, _PREPARING = 0, 1  # how far an XA branch got
_SETTLE_TRIES = 50  # at open, 0.1 s apart: a crashed process's connections may still be closing
_DUPLICATE_OP_KEY = re.compile(r"for key '(?:journal\.)?journal_key'")
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_UPSERT_KEYS = {"accounts": ("id",), "holds": ("account_id", "id")}

_DRIVER_ERRORS = (mysql_errors.MySQLError, OSError, asyncio.TimeoutError)


def _is_server_error(exc: BaseException) -> bool:
    """An error the server reported on a healthy connection (errno < 2000); client errors are CR_* 2000+."""
    if not isinstance(exc, mysql_errors.DatabaseError) or isinstance(exc, mysql_errors.InternalError):
        return False
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return errno is not None and 1000 <= errno < 2000


def _translate(exc: BaseException, what: str) -> StorageError:
    if isinstance(exc, mysql_errors.IntegrityError) and exc.args and exc.args[0] == _ER_DUP_ENTRY:
        if _DUPLICATE_OP_KEY.search(str(exc.args[-1])):
            return DuplicateOperation(str(exc.args[-1]))
    return StorageError(f"mariadb {what}: {exc!r}")


_BULK_ROWS_MIN = 256  # smaller batches go as one multi-statement text packet: one round trip
_BULK_CHUNK = 2000  # rows per bulk command (stays far below max_allowed_packet)
_NULLABLE = schema.nullable_columns()  # left out of a bulk statement when NULL in every row


def _packets(statements: list[str], budget: int) -> Iterator[str]:
    """Statements joined with ';' into packets of at most ``budget`` characters (one if it fits)."""
    packet: list[str] = []
    size = 0
    for statement in statements:
        if packet and size + len(statement) + 1 > budget:
            yield ";".join(packet)
            packet, size = [], 0
        packet.append(statement)
        size += len(statement) + 1
    if packet:
        yield ";".join(packet)


class _Chained:
    """A small batch waiting for its turn on the first writer connection."""

    __slots__ = ("batch", "after", "task", "done")

    def __init__(
        self, batch: BatchWrite, after: asyncio.Future[None] | None, task: object, done: asyncio.Future[None]
    ) -> None:
        self.batch, self.after, self.task, self.done = batch, after, task, done


def _columns(columns: tuple[str, ...]) -> str:
    return ",".join(f"`{c}`" for c in columns)


def _thread_id(conn: asyncmy.Connection) -> int:
    thread = conn.server_thread_id
    return int(thread[0] if isinstance(thread, tuple) else thread)


class _Writer:
    """A writer connection (autocommit off) and the bulk statements prepared on it."""

    __slots__ = ("conn", "lock", "statements")

    def __init__(self) -> None:
        self.conn: asyncmy.Connection | None = None
        self.lock = asyncio.Lock()
        self.statements: dict[tuple[str, tuple[int, ...]], Any] = {}


class MariaDbShardStorage:
    """ShardStorage on one MariaDB database."""

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
        self._writers = (_Writer(), _Writer())
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
        self._chain: deque[_Chained] = deque()  # small batches waiting to be sent, in order
        self._chain_runner: asyncio.Task[None] | None = None
        self._chain_last: tuple[object, bool] = (None, False)  # the last one sent: its commit task, succeeded
        # The loop it was opened in: CPython 3.11's get_running_loop() (also inside
        # current_task()) makes a getpid() system call; three per small commit were 1.4% of
        # a single-op server's samples.
        self._loop: asyncio.AbstractEventLoop | None = None

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"MariaDbShardStorage({self.user}@{self.host}:{self.port}/{self.database})"

    # ---- plumbing ------------------------------------------------------------------------

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
                    for name, table, columns, unique in schema.indexes("mariadb"):
                        kind = "UNIQUE INDEX" if unique else "INDEX"
                        await cur.execute(f"CREATE {kind} IF NOT EXISTS `{name}` ON `{table}` ({columns})")
                    for name, table in schema.INDEXES_DROPPED:  # after their replacements exist
                        await cur.execute(f"DROP INDEX IF EXISTS `{name}` ON `{table}`")
                    for column, ddl in schema.JOURNAL_COLUMNS_ADDED.items():  # an earlier version's database
                        await cur.execute(f"ALTER TABLE journal ADD COLUMN IF NOT EXISTS `{column}` {ddl}")
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
        except _DRIVER_ERRORS as exc:
            await self.close()
            raise _translate(exc, "open") from exc
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
            await self._connection(self._writers[0])
        except StorageError:
            await self.close()
            raise

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

    # ---- writes --------------------------------------------------------------------------

    async def _connection(self, writer: _Writer) -> asyncmy.Connection:
        """The writer's connection, reconnected if it was dropped or went stale while idle."""
        self._check_open()
        conn = writer.conn
        if conn is not None and conn.connected:
            if self._event_loop().time() - conn.last_usage < _IDLE_PING:
                return conn
            try:
                await conn.ping(reconnect=False)
                return conn
            except _DRIVER_ERRORS:
                conn.close()
        writer.conn = None
        try:
            conn = await asyncmy.connect(**self._connect_kwargs(autocommit=False))
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, "connect") from exc
        writer.conn, writer.statements = conn, {}
        return conn

    def _drop(self, writer: _Writer, conn: asyncmy.Connection, in_doubt: str | None = None) -> None:
        """Close a connection whose state is unknown; the server rolls back its open transaction.

        A prepared XA branch outlives its connection: ``in_doubt`` names such a branch, and the
        server thread is remembered, so that ``_settle_in_doubt`` can end it and roll it back."""
        if in_doubt is not None:
            self._orphans.add(_thread_id(conn))
            self._unsettled.add(in_doubt)
        conn.close()
        if writer.conn is conn:
            writer.conn, writer.statements = None, {}

    async def commit(self, batch: BatchWrite, after: asyncio.Future[None] | None = None) -> None:
        """Large batches (``_BULK_ROWS_MIN`` rows and more) are XA branches on the two writer
        connections in turn: this batch's rows go in and are prepared while ``after`` is still
        committing on the other connection, and it is committed only once ``after`` succeeded.
        Small batches are one text packet each on the first connection, sent in the order they
        are handed over (``_run_chain``): once ``after`` is done, or at once when ``after`` is the
        small batch just before and it succeeded.

        Row locks stay deadlock-free. The rows no other batch writes (journal, outbox, keys,
        pending transfers: new keys, inserts only) go in at once; the rows batches share
        (holds and accounts, upserted) only once the batch before has all of its own shared
        rows in. This batch may then wait for that one's locks (until it commits), never the
        reverse.
        """
        loop = self._event_loop()
        earlier_shared, shared_in = self._shared_in, loop.create_future()
        # A batch completing transfers updates and deletes by key: if a key were missing, its
        # gap lock could wait for the next batch's own rows. The next batch then waits for it.
        earlier_exclusive, self._exclusive = self._exclusive, bool(batch.transfers_completed or batch.holds_deleted)
        self._shared_in = shared_in
        try:
            if len(batch.journal) + len(batch.holds) >= _BULK_ROWS_MIN:
                writer = self._writers[self._turn]
                self._turn ^= 1
                if earlier_exclusive and earlier_shared is not None:
                    await asyncio.wait([earlier_shared])
                await self._commit_branch(writer, batch, after, earlier_shared, shared_in)
            else:
                item = _Chained(batch, after, asyncio.current_task(loop), loop.create_future())
                self._chain.append(item)
                if self._chain_runner is None or self._chain_runner.done():
                    self._chain_runner = loop.create_task(self._run_chain())
                await item.done
        finally:
            if not shared_in.done():
                shared_in.set_result(None)

    async def _run_chain(self) -> None:
        """Send the small batches' packets one after another on the first connection.

        Batch N+1's packet goes out in the same step that reads N's answer: no trip through
        the event loop's queue between them (behind the HTTP requests read meanwhile, that
        trip took as long as the commit itself: the connection was busy 43-47% of the time).
        N+1 is sent only if N succeeded, and only if its waiter still waits for it."""
        writer = self._writers[0]
        try:
            while self._chain:
                item = self._chain.popleft()
                if item.done.done():  # the waiter gave up (cancelled): not sent, and a failure for the next
                    self._chain_last = (item.task, False)
                    continue
                last_task, last_ok = self._chain_last
                if item.after is None:
                    ok = True
                elif item.after is last_task:
                    ok = last_ok
                else:  # the batch before went another way (an XA branch, or nothing to write)
                    ok = await succeeded(item.after)
                if not ok:
                    item.done.set_exception(StorageError(EARLIER_FAILED))
                    self._chain_last = (item.task, False)
                    continue
                try:
                    await self._commit_text(writer, item.batch)
                except Exception as exc:
                    self._chain_last = (item.task, False)
                    if not item.done.done():
                        item.done.set_exception(exc)
                    continue
                # A waiter cancelled meanwhile counts as a failure: the engine undoes it and the batch after.
                self._chain_last = (item.task, not item.done.done())
                if not item.done.done():
                    item.done.set_result(None)
        except BaseException as exc:  # cancelled (the storage closes): nothing more goes out
            while self._chain:
                item = self._chain.popleft()
                if not item.done.done():
                    item.done.set_exception(StorageError(f"{self!r} is closed"))
            if not isinstance(exc, asyncio.CancelledError):
                raise

    async def _commit_text(self, writer: _Writer, batch: BatchWrite) -> None:
        async with writer.lock:
            conn = await self._connection(writer)
            statements = batch.prepared if isinstance(batch.prepared, list) else self._statements(conn, batch)
            try:
                async with conn.cursor() as cur:
                    # Usually ONE round trip: the statements go as multi-statement packets of at
                    # most the packet budget (the server stops at the first error, leaving the
                    # transaction open for the rollback).
                    for packet in _packets(statements, self._packet_budget):
                        await cur.execute(packet)
                        while await cur.nextset():
                            pass
            except BaseException as exc:
                await self._abort(writer, conn, exc)
                if isinstance(exc, _DRIVER_ERRORS):
                    raise _translate(exc, "commit") from exc
                raise

    async def _commit_branch(
        self,
        writer: _Writer,
        batch: BatchWrite,
        after: asyncio.Future[None] | None,
        earlier_shared: asyncio.Future[None] | None,
        shared_in: asyncio.Future[None],
    ) -> None:
        """XA START, the batch's own rows, (the batch before has its shared rows in) the shared
        rows, XA END, XA PREPARE; (``after`` succeeded) XA COMMIT, or else XA ROLLBACK."""
        async with writer.lock:
            conn = await self._connection(writer)
            xid = f"{self._xid_prefix}{next(self._xid_numbers)}"
            stage = _ACTIVE
            try:
                async with conn.cursor() as cur:
                    await cur.execute(f"XA START '{xid}'")
                    await self._write_rows(writer, conn, cur, batch, self._own_tables(batch))
                    if earlier_shared is not None:
                        await asyncio.wait([earlier_shared])
                    await self._write_rows(writer, conn, cur, batch, self._shared_tables(batch))
                    for sql in self._completion_statements(conn, batch):
                        await cur.execute(sql)
                    await cur.execute(f"XA END '{xid}'")
                    shared_in.set_result(None)
                    stage = _PREPARING
                    await cur.execute(f"XA PREPARE '{xid}'")
                    if not await succeeded(after):
                        raise StorageError(EARLIER_FAILED)
                    await self._xa_commit(cur, xid)
            except BaseException as exc:
                await self._abort_branch(writer, conn, xid, stage, exc)
                if isinstance(exc, _DRIVER_ERRORS):
                    raise _translate(exc, "commit") from exc
                raise

    @staticmethod
    async def _xa_commit(cur: Any, xid: str) -> None:
        """The decision (a step of its own: the tests inject a lost connection here)."""
        await cur.execute(f"XA COMMIT '{xid}'")

    async def _write_rows(
        self,
        writer: _Writer,
        conn: asyncmy.Connection,
        cur: Any,
        batch: BatchWrite,
        tables: tuple[tuple[str, tuple[str, ...], list[Row], bool], ...],
    ) -> None:
        """Each table's rows in COM_STMT_BULK_EXECUTE commands (binary, no SQL text to build or
        parse: measured 63k rows/s against 36k for text VALUES), or text INSERTs if the server
        has no bulk command."""
        for table, columns, rows, upsert in tables:
            if not conn._bulk_supported:
                for sql in self._insert_statements(conn, table, columns, rows, upsert):
                    await cur.execute(sql)
                continue
            nullable = [i for i, column in enumerate(columns) if column in _NULLABLE]
            for start in range(0, len(rows), _BULK_CHUNK):
                chunk = rows[start : start + _BULK_CHUNK]
                # The bulk command cannot type a column that is NULL in every row: leave such
                # columns out of the statement (they default to NULL).
                absent = tuple(i for i in nullable if all(row[i] is None for row in chunk))
                if absent:
                    keep = [i for i in range(len(columns)) if i not in absent]
                    chunk = [tuple([row[i] for i in keep]) for row in chunk]
                statement = await self._bulk_statement(writer, conn, table, columns, upsert, absent)
                try:
                    await statement.execute_bulk(chunk)
                except ValueError:  # refused before any IO (mixed types in a column)
                    full = rows[start : start + _BULK_CHUNK]
                    for sql in self._insert_statements(conn, table, columns, full, upsert):
                        await cur.execute(sql)

    async def _bulk_statement(
        self,
        writer: _Writer,
        conn: asyncmy.Connection,
        table: str,
        columns: tuple[str, ...],
        upsert: bool,
        absent: tuple[int, ...],
    ) -> Any:
        """The prepared one-row INSERT of ``table`` without the ``absent`` columns, on this
        connection (prepared once per shape and connection)."""
        key = (table, absent)
        statement = writer.statements.get(key)
        if statement is not None:
            return statement
        present = tuple(column for i, column in enumerate(columns) if i not in absent)
        tail = ""
        if upsert:
            keys = _UPSERT_KEYS[table]
            tail = " ON DUPLICATE KEY UPDATE " + ",".join(f"`{c}`=VALUES(`{c}`)" for c in columns if c not in keys)
        sql = f"INSERT INTO `{table}` ({_columns(present)}) VALUES (" + ",".join("?" * len(present)) + ")" + tail
        statement = writer.statements[key] = await conn.prepare(sql)
        return statement

    @staticmethod
    def _own_tables(batch: BatchWrite) -> tuple[tuple[str, tuple[str, ...], list[Row], bool], ...]:
        """Rows only this batch writes: inserts of new keys."""
        return (
            ("journal", schema.JOURNAL_COLUMNS, batch.journal, False),
            ("outbox", schema.OUTBOX_COLUMNS, batch.outbox, False),
            ("api_keys", schema.KEY_COLUMNS, batch.keys, False),
            ("transfers_pending", schema.TRANSFER_COLUMNS, batch.transfers_started, False),
        )

    @staticmethod
    def _shared_tables(batch: BatchWrite) -> tuple[tuple[str, tuple[str, ...], list[Row], bool], ...]:
        """Rows the batches before and after may write too (upserts)."""
        return (
            ("holds", schema.HOLD_COLUMNS, batch.holds, True),
            ("accounts", schema.ACCOUNT_COLUMNS, batch.accounts, True),
        )

    def in_flight_max(self, batch: BatchWrite) -> int:
        """Two: small batches are sent one after another on one connection (merging those
        waiting was measured 0.96x), large ones prepared on the two writer connections."""
        return 2

    def prepare(self, batch: BatchWrite) -> None:
        """Escape a small batch into SQL now, while the previous batch is still being written
        (large batches go in the binary bulk command instead: nothing to build)."""
        conn = self._writers[0].conn
        if conn is not None and conn.connected and len(batch.journal) + len(batch.holds) < _BULK_ROWS_MIN:
            batch.prepared = self._statements(conn, batch)

    def _statements(self, conn: asyncmy.Connection, batch: BatchWrite) -> list[str]:
        statements: list[str] = []  # autocommit is off: the first INSERT opens the transaction
        for table, columns, rows, upsert in self._own_tables(batch) + self._shared_tables(batch):
            statements += self._insert_statements(conn, table, columns, rows, upsert)
        statements += self._completion_statements(conn, batch)
        statements.append("COMMIT")
        return statements

    @staticmethod
    def _completion_statements(conn: asyncmy.Connection, batch: BatchWrite) -> list[str]:
        statements = []
        for start in range(0, len(batch.holds_deleted), _BULK_CHUNK):  # a checkpoint's finished holds
            keys = batch.holds_deleted[start : start + _BULK_CHUNK]
            pairs = ",".join(f"({conn.literal(account_id)},{conn.literal(hold_id)})" for account_id, hold_id in keys)
            statements.append(f"DELETE FROM holds WHERE (account_id, id) IN ({pairs})")
        if batch.checkpoint_seq:
            statements.append(
                f"UPDATE meta SET value = {int(batch.checkpoint_seq)} WHERE name = '{schema.CHECKPOINT_META_KEY}'"
            )
        for result, account_id, op_id in batch.transfers_completed:  # rare: row by row
            key = conn.literal(account_id)
            statements.append(
                f"UPDATE journal SET status = 201, result = {conn.literal(result)}"
                f" WHERE account_id = {key} AND op_key = {conn.literal(f'transfer:{op_id}')}"
            )
            statements.append(
                f"DELETE FROM transfers_pending WHERE account_id = {key} AND op_id = {conn.literal(op_id)}"
            )
        return statements

    @staticmethod
    def _trusted(conn: asyncmy.Connection, exc: BaseException) -> bool:
        """Is the connection still in step after ``exc``? A server-side error (duplicate key,
        lock wait timeout, ...) leaves it usable, possibly inside the transaction; anything
        else (cancellation, a lost or desynchronised connection) does not."""
        if isinstance(exc, asyncio.CancelledError) or not conn.connected:
            return False
        return _is_server_error(exc) or not isinstance(exc, _DRIVER_ERRORS)

    async def _abort(self, writer: _Writer, conn: asyncmy.Connection, exc: BaseException) -> None:
        if not self._trusted(conn, exc):
            self._drop(writer, conn)
            return
        try:
            await conn.rollback()
        except BaseException as rollback_exc:
            self._drop(writer, conn)  # e.g. the server killed the connection (ER_CONNECTION_KILLED)
            if not isinstance(rollback_exc, Exception):
                raise

    async def _abort_branch(
        self, writer: _Writer, conn: asyncmy.Connection, xid: str, stage: int, exc: BaseException
    ) -> None:
        """Roll the branch back on its connection. If that cannot be done, drop the connection:
        a branch not yet prepared dies with it; a prepared one is rolled back from another
        connection at once if possible (until then its row locks stop the batch after it)."""
        in_doubt = xid if stage == _PREPARING else None
        if self._trusted(conn, exc):
            try:
                async with conn.cursor() as cur:
                    if stage == _ACTIVE:
                        try:
                            await cur.execute(f"XA END '{xid}'")
                        except mysql_errors.MySQLError as end_exc:
                            if not _is_server_error(end_exc):
                                raise
                    try:
                        await cur.execute(f"XA ROLLBACK '{xid}'")
                    except mysql_errors.MySQLError as rollback_exc:
                        if not (rollback_exc.args and rollback_exc.args[0] == _ER_XAER_NOTA):
                            raise  # XAER_NOTA: the server rolled it back already (a deadlock, say)
                return
            except BaseException as rollback_exc:
                if not isinstance(rollback_exc, Exception):
                    self._drop(writer, conn, in_doubt)
                    raise
        self._drop(writer, conn, in_doubt)
        if in_doubt is not None and not isinstance(exc, asyncio.CancelledError):
            for _ in range(10):
                try:
                    await self._settle_in_doubt()
                    return
                except StorageError:
                    await asyncio.sleep(0.1)

    async def _settle_in_doubt(self, *, every_branch_of_ours: bool = False) -> None:
        """Roll back prepared XA branches that no commit will finish: those of failed commits,
        or at open, every branch of this database a crashed process left prepared.

        Rolling back is always the right decision: a batch's callers are answered only after
        its XA COMMIT, so an undecided branch was never acknowledged, and a branch is committed
        only after the batch before it, so the batches committed stay a prefix of the order.

        A branch still attached to a connection cannot be rolled back from another one
        (XAER_NOTA): the threads of dropped connections are killed first; if one is still
        going, this raises StorageError and the caller tries again.
        """
        if not every_branch_of_ours and not self._unsettled and not self._orphans:
            return

        async def settle(conn: asyncmy.Connection) -> None:
            async with conn.cursor() as cur:
                for thread in sorted(self._orphans):
                    try:
                        await cur.execute(f"KILL CONNECTION {int(thread)}")
                    except mysql_errors.MySQLError as exc:
                        if not _is_server_error(exc):
                            raise  # (a server error: that thread is gone already)
                    self._orphans.discard(thread)
                await cur.execute("XA RECOVER")
                prepared = [bytes(row[3]).decode() for row in await cur.fetchall()]
                for xid in prepared:
                    if xid.startswith(self._xid_prefix) and (every_branch_of_ours or xid in self._unsettled):
                        log.warning("%r: rolling back the prepared XA branch %s of a failed commit", self, xid)
                        await cur.execute(f"XA ROLLBACK '{xid}'")
                self._unsettled.clear()  # what XA RECOVER did not list has been decided already

        await self._read(settle)

    def _heads(self, table: str, columns: tuple[str, ...], upsert: bool) -> tuple[str, str]:
        """``INSERT INTO t (cols) VALUES `` and, for upserts, ``ON DUPLICATE KEY UPDATE …``."""
        cached = self._head_cache.get(table)
        if cached is None:
            head = f"INSERT INTO `{table}` ({_columns(columns)}) VALUES "
            tail = ""
            if upsert:
                keys = _UPSERT_KEYS[table]
                tail = " ON DUPLICATE KEY UPDATE " + ",".join(f"`{c}`=VALUES(`{c}`)" for c in columns if c not in keys)
            cached = self._head_cache[table] = (head, tail)
        return cached

    def _insert_statements(
        self, conn: asyncmy.Connection, table: str, columns: tuple[str, ...], rows: list[Row], upsert: bool
    ) -> Iterator[str]:
        """Explicit multi-row INSERTs: one statement per ``_CHUNK`` rows (fewer if rows are large).

        Values are escaped by the driver (``Connection.literal``); bytes go as ``_binary'...'``.
        """
        if not rows:
            return
        head, tail = self._heads(table, columns, upsert)
        literal = conn.literal
        budget = self._packet_budget - len(head) - len(tail)
        parts: list[str] = []
        size = 0
        for row in rows:
            value = row_values(row, literal)
            if parts and (len(parts) >= _CHUNK or size + len(value) > budget):
                yield head + ",".join(parts) + tail
                parts, size = [], 0
            parts.append(value)
            size += len(value) + 1
        yield head + ",".join(parts) + tail

    async def session_status(self, pattern: str = "Com_insert%") -> dict[str, int]:
        """``SHOW SESSION STATUS LIKE pattern`` summed over the writer connections (statement counters)."""
        totals: dict[str, int] = {}
        for writer in self._writers:
            async with writer.lock:
                try:
                    conn = await self._connection(writer)
                    async with conn.cursor() as cur:
                        await cur.execute("SHOW SESSION STATUS LIKE %s", (pattern,))
                        rows = await cur.fetchall()
                except _DRIVER_ERRORS as exc:
                    raise _translate(exc, "status") from exc
            for name, value in rows:
                totals[name] = totals.get(name, 0) + int(value)
        return totals

    # ---- reads ---------------------------------------------------------------------------

    async def _read(self, fn: Callable[[asyncmy.Connection], Awaitable[T]]) -> T:
        self._check_open()
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self!r} is closed")
        try:
            async with pool.acquire() as conn:
                try:
                    return await fn(conn)
                except BaseException as exc:
                    if not _is_server_error(exc):
                        conn.close()  # the pool discards closed connections
                    raise
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, "read") from exc
        except RuntimeError as exc:  # "Cannot acquire connection after closing pool"
            if not self._open:
                raise StorageError(f"{self!r} is closed") from exc
            raise

    @staticmethod
    async def _fetch(conn: asyncmy.Connection, sql: str, args: Any = None) -> list[Row]:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def load(self) -> LoadedShard:
        async def read(conn: asyncmy.Connection) -> LoadedShard:
            # One snapshot for the three reads. On failure the pool discards the connection
            # (it is closed by _read, and a connection released inside a transaction is too).
            await self._fetch(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            accounts = await self._fetch(conn, f"SELECT {_columns(schema.ACCOUNT_COLUMNS)} FROM accounts")
            holds = await self._fetch(
                conn, f"SELECT {_columns(schema.HOLD_COLUMNS)} FROM holds WHERE status = 'pending'"
            )
            last = await self._fetch(
                conn,
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM journal), 0),"
                " COALESCE((SELECT MAX(seq) FROM outbox), 0))",
            )
            await self._fetch(conn, "COMMIT")
            accounts = [
                (*row[:ACCOUNT_EXHAUSTED], bool(row[ACCOUNT_EXHAUSTED]), *row[ACCOUNT_EXHAUSTED + 1 :])
                for row in accounts
            ]
            return LoadedShard(accounts, holds, int(last[0][0]) + 1)

        return await self._read(read)

    async def scan_accounts(self, after_id: str, limit: int) -> list[Row]:
        sql = f"SELECT {_columns(schema.ACCOUNT_COLUMNS)} FROM accounts WHERE id > %s ORDER BY id LIMIT %s"
        # ``exhausted`` comes back as 0/1: Account.from_row makes it a bool (not a second pass here).
        return await self._read(lambda conn: self._fetch(conn, sql, (after_id, limit)))

    async def scan_pending_holds(self, after: tuple[str, str], limit: int) -> list[Row]:
        sql = (
            f"SELECT {_columns(schema.HOLD_COLUMNS)} FROM holds WHERE status = 'pending'"
            " AND (account_id > %s OR (account_id = %s AND id > %s)) ORDER BY account_id, id LIMIT %s"
        )
        return await self._read(lambda conn: self._fetch(conn, sql, (after[0], after[0], after[1], limit)))

    async def checkpoint_seq(self) -> int:
        sql = "SELECT value FROM meta WHERE name = %s"
        rows = await self._read(lambda conn: self._fetch(conn, sql, (schema.CHECKPOINT_META_KEY,)))
        return int(rows[0][0]) if rows else 0

    async def scan_recovery_journal(self, after_seq: int, limit: int) -> list[Row]:
        sql = schema.recovery_journal_query("%s")
        return await self._read(lambda conn: self._fetch(conn, sql, (after_seq, limit)))

    async def pending_transfers(self) -> list[Row]:
        sql = f"SELECT {_columns(schema.TRANSFER_COLUMNS)} FROM transfers_pending ORDER BY created_at"
        return await self._read(lambda conn: self._fetch(conn, sql))

    async def max_seq(self) -> int:
        await self._settle_in_doubt()
        rows = await self._read(
            lambda conn: self._fetch(
                conn,
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM journal), 0),"
                " COALESCE((SELECT MAX(seq) FROM outbox), 0))",
            )
        )
        return int(rows[0][0])

    async def load_keys(self) -> list[tuple[str, str]]:
        return await self._read(lambda conn: self._fetch(conn, "SELECT key_hash, account_id FROM api_keys"))

    async def lookup(
        self, op_keys: list[tuple[str, str]], hold_keys: list[tuple[str, str]]
    ) -> tuple[list[StoredOperation], list[Row]]:
        """Batched: one query per ``_LOOKUP_CHUNK`` keys. Results come in the order of the keys asked."""
        if not op_keys and not hold_keys:
            self._check_open()
            return [], []

        async def read(conn: asyncmy.Connection) -> tuple[list[StoredOperation], list[Row]]:
            found_ops: dict[tuple[str, str], Row] = {}
            for start in range(0, len(op_keys), _LOOKUP_CHUNK):
                chunk = list(dict.fromkeys(op_keys[start : start + _LOOKUP_CHUNK]))
                sql = (
                    "SELECT account_id, op_key, fingerprint, status, result FROM journal"
                    " WHERE (op_key, account_id) IN (" + ",".join(["(%s,%s)"] * len(chunk)) + ")"
                )  # in the index's order (``journal_key``)
                for row in await self._fetch(conn, sql, [v for a, k in chunk for v in (k, a)]):
                    found_ops[(row[0], row[1])] = row
            found_holds: dict[tuple[str, str], Row] = {}
            for start in range(0, len(hold_keys), _LOOKUP_CHUNK):
                chunk = list(dict.fromkeys(hold_keys[start : start + _LOOKUP_CHUNK]))
                # The journal is the record of a hold: its rows rebuild it.
                wanted = [(a, op_key_of(kind, h)) for a, h in chunk for kind in HOLD_KINDS]
                sql = (
                    f"SELECT {_columns(schema.HOLD_JOURNAL_COLUMNS)} FROM journal"
                    " WHERE (op_key, account_id) IN (" + ",".join(["(%s,%s)"] * len(wanted)) + ")"
                    " AND status < 300 ORDER BY seq"
                )
                per_hold: dict[tuple[str, str], list[Row]] = {}
                for row in await self._fetch(conn, sql, [v for a, k in wanted for v in (k, a)]):
                    per_hold.setdefault((row[HOLD_JOURNAL_ACCOUNT_ID], row[HOLD_JOURNAL_HOLD_ID]), []).append(row)
                for key, rows in per_hold.items():
                    if (rebuilt := hold_from_journal(rows)) is not None:
                        found_holds[key] = rebuilt
                older = [key for key in chunk if key not in found_holds]  # an earlier version's journal
                if older:
                    sql = (
                        f"SELECT {_columns(schema.HOLD_COLUMNS)} FROM holds"
                        " WHERE (account_id, id) IN (" + ",".join(["(%s,%s)"] * len(older)) + ")"
                    )
                    for row in await self._fetch(conn, sql, [v for key in older for v in key]):
                        found_holds[(row[HOLD_ACCOUNT_ID], row[HOLD_ID])] = row
            operations = [
                StoredOperation(account_id, op_key, row[2], row[3], row[4])
                for account_id, op_key in op_keys
                if (row := found_ops.get((account_id, op_key))) is not None
            ]
            holds = [row for key in hold_keys if (row := found_holds.get(key)) is not None]
            return operations, holds

        return await self._read(read)

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]:
        sql, args = schema.history_query("%s", account_id, limit, before_seq, since, until)
        return await self._read(lambda conn: self._fetch(conn, sql, args))

    async def get_hold(self, account_id: str, hold_id: str) -> Row | None:
        _, holds = await self.lookup([], [(account_id, hold_id)])
        return holds[0] if holds else None

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]:
        sql = "SELECT id FROM accounts WHERE parent_id = %s AND id > %s ORDER BY id LIMIT %s"
        rows = await self._read(lambda conn: self._fetch(conn, sql, (parent_id, after_id or "", int(limit))))
        return [row[0] for row in rows]


def from_url(url: str, shard: int) -> MariaDbShardStorage:
    """``mysql://user:password@host:port/name`` -> the storage of database ``{name}_s{shard}``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"not a mysql:// URL: {url!r}")
    name = parts.path.lstrip("/")
    if not parts.hostname or not name or "/" in name:
        raise ValueError(f"expected mysql://user:password@host:port/name, got {url!r}")
    return MariaDbShardStorage(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=f"{unquote(name)}_s{shard}",
    )
