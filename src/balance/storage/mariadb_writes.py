"""The MariaDB write path: small batches sent one after another on the first writer
connection (``_run_chain``), large ones as XA branches on the two writer connections in turn,
each committed only after the batch before it; what a failure leaves is rolled back,
including XA branches left prepared (``_settle_in_doubt``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncmy
from asyncmy import errors as mysql_errors

from balance.storage.base import EARLIER_FAILED, BatchWrite, StorageError, succeeded
from balance.storage.mariadb_driver import DRIVER_ERRORS, is_server_error, translate
from balance.storage.mariadb_statements import MariaDbStatements, packets

log = logging.getLogger("balance.storage.mariadb")

_IDLE_PING = 10.0  # seconds: a writer idle longer is pinged (and reconnected) before BEGIN
_ER_XAER_NOTA = 1397  # unknown XID: decided already, or still attached to its connection
_ACTIVE, _PREPARING = 0, 1  # how far an XA branch got
_BULK_ROWS_MIN = 256  # smaller batches go as one multi-statement text packet: one round trip
T = TypeVar("T")


class Chained:
    """A small batch waiting for its turn on the first writer connection."""

    __slots__ = ("batch", "after", "task", "done")

    def __init__(
        self, batch: BatchWrite, after: asyncio.Future[None] | None, task: object, done: asyncio.Future[None]
    ) -> None:
        self.batch, self.after, self.task, self.done = batch, after, task, done


def _thread_id(conn: asyncmy.Connection) -> int:
    thread = conn.server_thread_id  # type: ignore[attr-defined]  # asyncmy's stub omits it
    return int(thread[0] if isinstance(thread, tuple) else thread)


class Writer:
    """A writer connection (autocommit off) and the bulk statements prepared on it."""

    __slots__ = ("conn", "lock", "statements")

    def __init__(self) -> None:
        self.conn: asyncmy.Connection | None = None
        self.lock = asyncio.Lock()
        self.statements: dict[tuple[str, tuple[int, ...]], Any] = {}


class MariaDbWrites(MariaDbStatements):
    """Part of ``MariaDbShardStorage`` (a mixin): ``commit`` and what it needs. The state is
    made by ``MariaDbShardStorage.__init__``; the statements come from ``MariaDbStatements``."""

    _writers: tuple[Writer, Writer]
    _turn: int
    _shared_in: asyncio.Future[None] | None
    _exclusive: bool
    _xid_prefix: str
    _xid_numbers: itertools.count[int]
    _unsettled: set[str]
    _orphans: set[int]
    _packet_budget: int
    _chain: deque[Chained]
    _chain_runner: asyncio.Task[None] | None
    _chain_last: tuple[object, bool]

    if TYPE_CHECKING:  # what the other parts of MariaDbShardStorage provide

        def _check_open(self) -> None: ...
        def _event_loop(self) -> asyncio.AbstractEventLoop: ...
        def _connect_kwargs(self, *, database: bool = True, autocommit: bool) -> dict[str, Any]: ...
        async def _read(self, fn: Callable[[asyncmy.Connection], Awaitable[T]]) -> T: ...

    async def _connection(self, writer: Writer) -> asyncmy.Connection:
        """The writer's connection, reconnected if it was dropped or went stale while idle."""
        self._check_open()
        conn = writer.conn
        if conn is not None and conn.connected:
            if self._event_loop().time() - conn.last_usage < _IDLE_PING:
                return conn
            try:
                await conn.ping(reconnect=False)
                return conn
            except DRIVER_ERRORS:
                conn.close()
        writer.conn = None
        try:
            conn = await asyncmy.connect(**self._connect_kwargs(autocommit=False))
        except DRIVER_ERRORS as exc:
            raise translate(exc, "connect") from exc
        writer.conn, writer.statements = conn, {}
        return conn

    def _drop(self, writer: Writer, conn: asyncmy.Connection, in_doubt: str | None = None) -> None:
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
                item = Chained(batch, after, asyncio.current_task(loop), loop.create_future())
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

    async def _commit_text(self, writer: Writer, batch: BatchWrite) -> None:
        async with writer.lock:
            conn = await self._connection(writer)
            statements = batch.prepared if isinstance(batch.prepared, list) else self._statements(conn, batch)
            try:
                async with conn.cursor() as cur:
                    # Usually ONE round trip: the statements go as multi-statement packets of at
                    # most the packet budget (the server stops at the first error, leaving the
                    # transaction open for the rollback).
                    for packet in packets(statements, self._packet_budget):
                        await cur.execute(packet)
                        while await cur.nextset():
                            pass
            except BaseException as exc:
                await self._abort(writer, conn, exc)
                if isinstance(exc, DRIVER_ERRORS):
                    raise translate(exc, "commit") from exc
                raise

    async def _commit_branch(
        self,
        writer: Writer,
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
                    if self._fence_guard is None:
                        await cur.execute(f"XA START '{xid}'")
                    else:  # the guard in the same packet: no round trip of its own
                        await cur.execute(f"XA START '{xid}';{self._fence_guard}")
                        while await cur.nextset():
                            pass
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
                if isinstance(exc, DRIVER_ERRORS):
                    raise translate(exc, "commit") from exc
                raise

    @staticmethod
    async def _xa_commit(cur: Any, xid: str) -> None:
        """The decision (a step of its own: the tests inject a lost connection here)."""
        await cur.execute(f"XA COMMIT '{xid}'")

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

    @staticmethod
    def _trusted(conn: asyncmy.Connection, exc: BaseException) -> bool:
        """Is the connection still in step after ``exc``? A server-side error (duplicate key,
        lock wait timeout, ...) leaves it usable, possibly inside the transaction; anything
        else (cancellation, a lost or desynchronised connection) does not."""
        if isinstance(exc, asyncio.CancelledError) or not conn.connected:
            return False
        return is_server_error(exc) or not isinstance(exc, DRIVER_ERRORS)

    async def _abort(self, writer: Writer, conn: asyncmy.Connection, exc: BaseException) -> None:
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
        self, writer: Writer, conn: asyncmy.Connection, xid: str, stage: int, exc: BaseException
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
                            if not is_server_error(end_exc):
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
                        if not is_server_error(exc):
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
                except DRIVER_ERRORS as exc:
                    raise translate(exc, "status") from exc
            for name, value in rows:
                totals[name] = totals.get(name, 0) + int(value)
        return totals
