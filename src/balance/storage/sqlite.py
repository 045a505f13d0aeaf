"""SQLite shard storage: one file per shard, WAL, ``synchronous=FULL``.

The stdlib driver blocks, so each shard has one writer thread (commits) and one reader
thread (look-ups, history) with a connection each; WAL lets them run side by side.
``synchronous=FULL`` syncs the WAL at every commit: an acknowledged batch survives a
process kill and a power loss alike.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from balance.domain.holds import hold_from_journal, placed_before_expiries
from balance.domain.ids import hold_journal_keys
from balance.domain.model import ACCOUNT_EXHAUSTED
from balance.storage import schema
from balance.storage.base import (
    EARLIER_FAILED,
    FENCE_META_KEY,
    BatchWrite,
    DuplicateOperation,
    Fenced,
    LoadedShard,
    Row,
    StorageError,
    StoredOperation,
    succeeded,
)
from balance.storage.thread_worker import ThreadWorker

T = TypeVar("T")
_CHUNK = 400  # rows per multi-row INSERT (SQLite allows 32766 bound parameters)
# The WAL is copied back into the database once it is at least this many pages long
# (SQLite's default: 1,000, 4 MB). A batch spread over many accounts dirties a page of each
# journal index per row, so with the default nearly every commit also copied its pages back;
# with 20,000 (80 MB of WAL at most) a page rewritten by many batches is copied once. Measured
# side by side (BENCHMARKS.md): +27% in process, +11-20% over HTTP on the uniform scenario.
# Durability is the WAL's (synchronous=FULL) either way.
WAL_AUTOCHECKPOINT_PAGES = 20_000
# The copy is not the writer's: SQLite's automatic checkpoint ran inside the commit that
# crossed the limit, up to 80 MB copied and synced while every answer waited (in process,
# holds left pending on 10,000 accounts at 3,000/s: p99 134 ms with it, 37 ms without). A
# thread of its own copies the WAL (a PASSIVE checkpoint: it never blocks the writer) every
# ``WAL_COPY_EVERY_S`` (a page rewritten by many commits meanwhile is copied once), and again
# at once while it is more than ``WAL_FINISH_FRAMES`` behind; once the WAL is past the limit
# and nearly all copied, the writer copies the last few frames itself after a commit, so the
# next commit starts the WAL over (SQLite restarts it only for a writer that finds it wholly
# copied). SQLite syncs the database file only in a checkpoint that copies the WAL up to its
# very end, which the copier's never do while commits go on (one lands during each pass): the
# writer's finishing copy synced all the copier had written since the WAL began, 10-30 ms every
# 2 s with holds pending at 5,000/s. The copier syncs the file itself after each pass
# (``_sync_database``), so the writer's sync finds a few pages to write: 1-3 ms.
WAL_COPY_EVERY_S = 1.0
WAL_COPY_AGAIN_S = 0.01  # the pause before copying again, while far behind
WAL_FINISH_FRAMES = 2_000  # the writer finishes a copy only this close to done
# Small batches (single operations, mostly) queued behind the commit being written go out
# with the next one, in ONE transaction: one WAL sync, and the pages they share written once.
# Up to three such batches in flight, at most _MERGE_ROWS rows merged. Measured side by side
# (BENCHMARKS.md): single operations 1.2-1.5x; larger batches are not merged (merging batches
# of 100 operations tied their senders' answers together: 0.88x).
IN_FLIGHT_MAX = 3
_MERGE_ROWS = 128


# Tables stored in primary key order (WITHOUT ROWID) rather than by an implicit rowid with the
# key in an index of its own. A checkpoint round writes accounts in id order (``round_order``),
# a slice per commit: ordered by rowid (the order of creation), the rows of a slice were on as
# many pages as rows (ids are random); by id, on one or two. A round's accounts 16 per commit
# (10,000 accounts): 0.53 -> 0.31 ms (``tools/round_row_cost.py``). Holds likewise, by expiry
# (``schema.HOLD_KEY_COLUMNS``): one tree, new holds at its end.
CLUSTERED_TABLES = ("accounts", "holds")


def _make_indexes(conn: sqlite3.Connection) -> None:
    for name, table, columns, unique in schema.indexes("sqlite"):
        kind = "UNIQUE INDEX" if unique else "INDEX"
        conn.execute(f"CREATE {kind} IF NOT EXISTS {name} ON {table} ({columns})")


def _cluster(conn: sqlite3.Connection, table: str) -> bool:
    """``table`` rebuilt WITHOUT ROWID if an earlier version made it with one (True: its
    indexes went with it, for the caller to make again)."""
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    if "WITHOUT ROWID" in sql.upper():
        return False
    columns = ",".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"CREATE TABLE {table}_clustered ({_sqlite_type(schema.TABLES[table])}) WITHOUT ROWID")
        conn.execute(f"INSERT INTO {table}_clustered ({columns}) SELECT {columns} FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_clustered RENAME TO {table}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def _sqlite_type(ddl: str) -> str:
    return (
        ddl.replace("BOOLEAN", "INTEGER").replace("BIGINT", "INTEGER").replace("SMALLINT", "INTEGER")
        .replace("DECIMAL(39,0)", "INTEGER")
    )  # fmt: skip


# SQLite's integers are 64-bit. A balance past them (a system account's: they have no bound)
# is stored as its decimal digits in a BLOB, which no column affinity converts (a TEXT of
# digits past 64 bits would become a lossy REAL). Reads turn it back into an int.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BALANCE = schema.ACCOUNT_COLUMNS.index("balance")


def _exact_accounts(rows: list[Row]) -> list[Row]:
    """Account rows to write, any balance past 64 bits encoded (``_read_accounts`` decodes)."""
    if all(_INT64_MIN <= row[_BALANCE] <= _INT64_MAX for row in rows):
        return rows
    return [
        row if _INT64_MIN <= row[_BALANCE] <= _INT64_MAX
        else (*row[:_BALANCE], str(row[_BALANCE]).encode(), *row[_BALANCE + 1 :])
        for row in rows
    ]  # fmt: skip


def _read_accounts(rows: list[Row]) -> list[Row]:
    """Account rows read, an encoded balance (``_exact_accounts``) back to an int."""
    if all(type(row[_BALANCE]) is int for row in rows):
        return rows
    return [
        row if type(row[_BALANCE]) is int else (*row[:_BALANCE], int(row[_BALANCE]), *row[_BALANCE + 1 :])
        for row in rows
    ]


# The upserted tables whose rows are rewritten in place (their primary key): ``INSERT OR
# REPLACE`` deletes the old row and inserts the new one, every index of the table rewritten;
# ``ON CONFLICT DO UPDATE`` changes the row where it is, and only the indexes whose columns
# changed (none, for a balance or a hold): fewer pages per checkpoint slice.
_UPSERT_KEYS = {"accounts": ("id",), "holds": schema.HOLD_KEY_COLUMNS}


def _insert_sql(table: str, columns: tuple[str, ...], rows: int, upsert: bool) -> str:
    keys = _UPSERT_KEYS.get(table) if upsert else None
    verb = "INSERT OR REPLACE" if upsert and keys is None else "INSERT"
    one = "(" + ",".join("?" * len(columns)) + ")"
    sql = f"{verb} INTO {table} ({','.join(columns)}) VALUES " + ",".join([one] * rows)
    if keys is not None:
        updates = ",".join(f"{column}=excluded.{column}" for column in columns if column not in keys)
        sql += f" ON CONFLICT ({','.join(keys)}) DO UPDATE SET {updates}"
    return sql


_HOLD_JOURNAL_BY_KEYS = (
    f"SELECT {','.join(schema.HOLD_JOURNAL_COLUMNS)} FROM journal"
    " WHERE account_id = ? AND op_key IN (?, ?, ?, ?, ?) AND status < 300 ORDER BY seq"
)
# A page of pending holds after (expires_at, account_id, id), in the primary key's order (a row
# value: a range of the table's tree). The table keeps pending holds only; ``+status`` (never an
# index term) filters an earlier version's rows.
PENDING_HOLDS_PAGE = (
    f"SELECT {','.join(schema.HOLD_COLUMNS)} FROM holds WHERE +status = 'pending'"
    " AND (expires_at, account_id, id) > (?, ?, ?) ORDER BY expires_at, account_id, id LIMIT ?"
)
_FENCE_EPOCH = f"SELECT value FROM meta WHERE name = '{FENCE_META_KEY}'"
_RECOVERY_JOURNAL_AFTER = schema.recovery_journal_query("?")
_MOVES_UNFINISHED = schema.MOVES_UNFINISHED.format(columns=",".join(schema.MOVE_COLUMNS))
_MOVE_PARTS = schema.MOVE_PARTS.format(p="?")
_HISTORY_FILL = schema.history_fill_sql("?", "?")
# The history table is filled with a commit once this many journal rows wait: never the whole
# of a checkpoint interval in one commit (a stall), never a row at a time (each page rewritten
# per commit). Each fill takes twice the commit's own journal rows, at least
# ``HISTORY_FILL_MIN``: it keeps up with the journal (the lag stays about ``HISTORY_SLICE_ROWS``)
# at a cost in proportion to the commit's, where 2,048-4,096 rows at once took 9-15 ms in a
# commit of a few (in process, 10,000 accounts).
HISTORY_SLICE_ROWS = 2048
HISTORY_FILL_MIN = 256


def _bind_directly() -> None:
    """sqlite3 binds exact ints, floats, strs and bytearrays as they are; any other value (None,
    bytes, bool: about a dozen per operation) goes through its adapter protocol, whose failed
    ``PrepareProtocol.__adapt__`` look-up formats and drops an AttributeError (~1,200
    instructions each, 5% of a batch's CPU measured with callgrind). An adapter registered for
    the type is found with one dict look-up instead; these are C callables that return the
    value as sqlite3 would have bound it (None stays NULL, bytes a BLOB, a bool 0 or 1)."""
    nothing: dict[None, None] = {}
    sqlite3.register_adapter(type(None), nothing.get)  # nothing.get(None) is None
    sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b
    sqlite3.register_adapter(bool, int)


_bind_directly()


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection to a shard file as the service opens it: WAL, synchronous=FULL (every
    commit synced before it is acknowledged), transactions explicit."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _FileSyncs:
    """Descriptors of database files for the copiers' syncs, one per file in the process.

    Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included: so storages of the same file in one process (a take-over in tests) share one,
    closed with the last of them, after its SQLite connections. Other connections of the
    process to the file at that moment (the relay's and the expiry job's readers, stopped with
    the shard) lose their locks on the database file, not those on its WAL index."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, int], tuple[int, int]] = {}  # (device, inode) -> (fd, users)

    def open(self, path: Path) -> int:
        stat = os.stat(path)  # (not a second descriptor to close: see above)
        key = (stat.st_dev, stat.st_ino)
        with self._lock:
            fd, users = self._open.get(key) or (os.open(path, os.O_RDONLY | os.O_CLOEXEC), 0)
            self._open[key] = (fd, users + 1)
        return fd

    def close(self, fd: int) -> None:
        with self._lock:
            for key, (shared, users) in self._open.items():
                if shared == fd:
                    if users > 1:
                        self._open[key] = (shared, users - 1)
                        return
                    del self._open[key]
                    break
        os.close(fd)


_file_syncs = _FileSyncs()


class _Link:
    """A commit handed to the writer thread, for the one queued behind it to check."""

    __slots__ = ("task", "batch", "earlier", "queued", "committed", "abandoned")

    def __init__(self, task: asyncio.Task[object] | None, batch: BatchWrite) -> None:
        self.task = task  # the commit() call's task: what the engine passes as ``after``
        self.batch = batch
        # The commit queued just before, when this one must follow it; dropped once this one is
        # committed, or under steady load every link would keep the one before it alive: a chain
        # of every batch written since the queue last ran dry, with its rows, tasks and
        # coroutines (hundreds, walked by each young collection of the garbage collector).
        self.earlier: _Link | None = None
        self.queued = False  # in the thread's queue
        self.committed = False  # set by the writer thread
        self.abandoned = False  # set on the loop: its waiter gave up

    def given_up(self) -> bool:
        """Read from the writer thread: a cancellation asked for counts at once (``Task.cancel``
        sets it synchronously), not only once the loop has delivered it."""
        return self.abandoned or (self.task is not None and self.task.cancelling() > 0)


class SqliteShardStorage:
    """ShardStorage on one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer_thread, self._reader_thread = self._new_threads()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._sql_cache: dict[tuple[str, int], str] = {}
        self._closed = False
        self._history_seq = 0  # the history table has the journal's pairs up to here (writer thread)
        self._last_link: _Link | None = None  # the latest commit handed to the writer thread
        # Commits handed to the writer thread and not yet taken up by it, in order: the thread
        # writes those queued behind the one it takes up in the same transaction (``_followers``).
        self._waiting: deque[_Link] = deque()
        self._waiting_lock = threading.Lock()
        self._owner_epoch: int | None = None  # ``fence_with``: every commit checks the fence row
        # The WAL copier (``_copy_wal``): its thread, its stop signal, a lock held while a
        # checkpoint runs (the copier's or the writer's), and its last result (frames).
        self._copier: threading.Thread | None = None
        self._copier_stop = threading.Event()
        self._copy_lock = threading.Lock()
        self._wal_frames = self._wal_left = 0
        # A descriptor of the database file, for the copier's syncs (``_FileSyncs``).
        self._database_fd: int | None = None

    # ---- plumbing ------------------------------------------------------------------------

    async def _run(self, thread: ThreadWorker, fn: Callable[[], T], link: _Link | None = None) -> T:
        try:
            future = thread.run(fn)
            if link is not None:
                link.queued = True  # in the thread's queue: a batch queued after it runs after it
            return await future
        except sqlite3.IntegrityError as exc:
            if "journal.op_key, journal.account_id" in str(exc):
                raise DuplicateOperation(str(exc)) from exc
            raise StorageError(f"sqlite integrity error: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc
        except RuntimeError as exc:  # the thread is shut down: the storage is closed
            raise StorageError(f"sqlite storage is closed: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    def _new_threads(self) -> tuple[ThreadWorker, ThreadWorker]:
        return ThreadWorker(f"sqlite-w-{self.path.stem}"), ThreadWorker(f"sqlite-r-{self.path.stem}")

    async def open(self) -> None:
        if self._closed:  # opened again after close(): new threads
            self._writer_thread, self._reader_thread = self._new_threads()
            self._closed = False
        self._waiting.clear()  # (commits handed over as the storage closed never reached the thread)
        self._last_link = None

        def setup() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._writer.execute("PRAGMA wal_autocheckpoint=0")  # the copier's (``_copy_wal``)
            conn = self._writer
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, ddl in schema.TABLES.items():
                clustered = " WITHOUT ROWID" if table in CLUSTERED_TABLES else ""
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_sqlite_type(ddl)}){clustered}")
            for table, ddl in schema.SQLITE_TABLES.items():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_sqlite_type(ddl)}) WITHOUT ROWID")
            _make_indexes(conn)
            for name, _ in schema.INDEXES_DROPPED:  # after their replacements exist
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            added = {"journal": schema.JOURNAL_COLUMNS_ADDED, **schema.COLUMNS_ADDED}
            for table, new_columns in added.items():  # a database of an earlier version
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, ddl in new_columns.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {_sqlite_type(ddl)}")
            rebuilt = [table for table in CLUSTERED_TABLES if _cluster(conn, table)]  # an earlier version's, by rowid
            if rebuilt:
                _make_indexes(conn)  # (their indexes went with them)
            if conn.execute("SELECT 1 FROM meta WHERE name = ?", (schema.OP_KEYS_META_KEY,)).fetchone() is None:
                conn.execute("BEGIN IMMEDIATE")  # an earlier version's keys (``schema.op_keys_migration_sql``)
                conn.execute(schema.op_keys_migration_sql("{} || {}"))
                conn.execute("INSERT INTO meta (name, value) VALUES (?, 1)", (schema.OP_KEYS_META_KEY,))
                conn.execute("COMMIT")
            # No checkpoint row yet: the holds table is complete (a new or an earlier version's database).
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) SELECT ?, COALESCE(MAX(seq), 0) FROM journal",
                (schema.CHECKPOINT_META_KEY,),
            )
            if "history" not in tables:  # an earlier version's journal: its pairs up to the checkpoint
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(schema.history_fill_sql("0", schema.CHECKPOINT_SEQ_SQL))
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) SELECT ?, value FROM meta WHERE name = ?",
                    (schema.HISTORY_META_KEY, schema.CHECKPOINT_META_KEY),
                )
                conn.execute("COMMIT")
            for name, _ in schema.SQLITE_INDEXES_DROPPED:  # once the history table has its pairs
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            # No history row yet: the table was filled up to the checkpoint (an earlier version's database).
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) SELECT ?, value FROM meta WHERE name = ?",
                (schema.HISTORY_META_KEY, schema.CHECKPOINT_META_KEY),
            )
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (schema.HISTORY_META_KEY,)).fetchone()
            self._history_seq = int(row[0])
            if self._owner_epoch is not None:
                self._take_over(conn, self._owner_epoch)

        await self._run(self._writer_thread, setup)
        self._reader = await self._run(self._reader_thread, self._connect)
        self._database_fd = _file_syncs.open(self.path)
        self._copier_stop.clear()
        self._copier = threading.Thread(target=self._copy_wal, name=f"sqlite-c-{self.path.stem}", daemon=True)
        self._copier.start()

    def _copy_wal(self) -> None:
        """The copier thread: the WAL into the database, without blocking the writer."""
        conn = self._connect()
        pause = WAL_COPY_EVERY_S
        synced = 0  # the frames copied as of the last sync (an idle WAL is not synced again)
        try:
            while not self._copier_stop.wait(pause):
                pause = WAL_COPY_EVERY_S
                with self._copy_lock:
                    try:
                        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if copied != synced:
                            self._sync_database()  # (the lock held: the writer's finish waits for a later commit)
                            synced = copied
                    except sqlite3.Error:
                        continue  # (busy, or closing: the next turn tries again)
                self._wal_frames, self._wal_left = frames, frames - copied
                if frames - copied > WAL_FINISH_FRAMES:
                    pause = WAL_COPY_AGAIN_S
        finally:
            conn.close()

    def _sync_database(self) -> None:
        """In the copier thread: what the copy wrote into the database file, to disk. No SQLite
        lock is held: the writer commits meanwhile."""
        if self._database_fd is not None:
            try:
                os.fdatasync(self._database_fd)
            except OSError:
                pass  # SQLite's own sync, before the WAL starts over, is the one that counts

    def _finish_wal_copy(self, conn: sqlite3.Connection) -> None:
        """In the writer thread, after a commit: a long WAL that the copier has nearly copied
        is finished here (a few frames), so the next commit starts the WAL over."""
        if self._wal_frames < WAL_AUTOCHECKPOINT_PAGES or not 0 <= self._wal_left <= WAL_FINISH_FRAMES:
            return
        if not self._copy_lock.acquire(blocking=False):
            return
        try:
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._wal_frames, self._wal_left = frames, frames - copied
            if frames == copied:
                self._wal_frames = 0  # restarted by the next commit
        except sqlite3.Error:
            pass  # the copier tries again; nothing of the commit depends on it
        finally:
            self._copy_lock.release()

    def fence_with(self, epoch: int) -> None:
        self._owner_epoch = epoch

    @staticmethod
    def _take_over(conn: sqlite3.Connection, epoch: int) -> None:
        """Write ``epoch`` to the fence row. BEGIN IMMEDIATE waits for a former owner's
        transaction in progress (another process on this file); once this commits, that
        owner's next commit sees the new epoch and fails."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (FENCE_META_KEY,)).fetchone()
            if row is not None and int(row[0]) > epoch:
                raise Fenced(f"the shard is owned with epoch {row[0]}, newer than ours ({epoch})")
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (FENCE_META_KEY, epoch))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        copier, self._copier = self._copier, None
        if copier is not None:
            self._copier_stop.set()
            await asyncio.to_thread(copier.join)
        for thread, conn in ((self._writer_thread, self._writer), (self._reader_thread, self._reader)):
            if conn is not None:
                await thread.run(conn.close)
            thread.shutdown(wait=True)
        self._writer = self._reader = None
        database_fd, self._database_fd = self._database_fd, None
        if database_fd is not None:  # (after SQLite's connections: see ``_FileSyncs``)
            _file_syncs.close(database_fd)
        self._closed = True

    # ---- writes --------------------------------------------------------------------------

    def prepare(self, batch: BatchWrite) -> None:
        """Nothing to do ahead: parameters are bound in the writer thread."""

    async def commit(self, batch: BatchWrite, after: asyncio.Future[None] | None = None) -> None:
        """One writer thread, in order. When ``after`` is the commit just handed to the thread,
        this batch is queued behind it at once and the thread itself checks that it succeeded:
        no trip through the event loop between the two. Waiting on the loop instead left the
        thread idle while the loop applied the next batch (a 2,000-operation batch keeps it
        busy ~30 ms): the writer was busy 64% of the time on spread-out batches.

        The engine keeps up to ``in_flight_max`` batches in flight; those queued behind the
        one the thread takes up go in its transaction (one WAL sync for all of them)."""
        link = _Link(asyncio.current_task(), batch)
        last, self._last_link = self._last_link, link
        if after is not None:
            if last is not None and last.queued and after is last.task:
                link.earlier = last
            elif not await succeeded(after):
                raise StorageError(EARLIER_FAILED)
        with self._waiting_lock:
            self._waiting.append(link)
        try:
            await self._run(self._writer_thread, lambda: self._commit_linked(link), link)
        except BaseException:
            link.abandoned = True  # e.g. cancelled while queued: the batch after must not follow it
            with self._waiting_lock:  # (cancelled before the thread took it up, it never will)
                if link in self._waiting:
                    self._waiting.remove(link)
            raise

    def in_flight_max(self, batch: BatchWrite) -> int:
        """Small batches: ``IN_FLIGHT_MAX``, so that while one is being written the others
        applied meanwhile wait in the thread's queue and go out together after it. Others: two."""
        return IN_FLIGHT_MAX if 2 * len(batch) <= _MERGE_ROWS else 2

    def _commit_linked(self, link: _Link) -> None:
        """In the writer thread: commit unless this batch's waiter gave up, or the batch before
        failed or was given up (a waiter that gives up counts as a failure: the engine undoes
        its batch and the one after, as on MariaDB). Already committed: it went out with the
        batch before it. The batches queued behind it go out with it; if that transaction
        fails, this batch is written again on its own, so that each batch still succeeds or
        fails on its own rows."""
        with self._waiting_lock:
            if link in self._waiting:
                self._waiting.remove(link)
        if link.committed:  # (in a group: its link to the one before is dropped already)
            return
        earlier = link.earlier
        if link.given_up() or (earlier is not None and (not earlier.committed or earlier.given_up())):
            raise StorageError(EARLIER_FAILED)
        group = self._followers(link)
        if len(group) > 1:
            try:
                self._commit_all([member.batch for member in group])
            except sqlite3.Error:
                pass  # again, one by one
            else:
                for member in group:
                    member.committed, member.earlier = True, None
                return
        self._commit_all([link.batch])
        link.committed, link.earlier = True, None

    def _followers(self, link: _Link) -> list[_Link]:
        """``link`` and the commits queued right behind it, each to follow the one before, up
        to ``_MERGE_ROWS`` rows."""
        group, rows = [link], len(link.batch)
        with self._waiting_lock:
            for following in self._waiting:
                rows += len(following.batch)
                if following.earlier is not group[-1] or following.given_up() or rows > _MERGE_ROWS:
                    break
                group.append(following)
        return group

    def _commit_all(self, batches: list[BatchWrite]) -> None:
        """Batches in ONE transaction, in order."""
        conn = self._writer
        if conn is None:
            raise sqlite3.OperationalError("storage is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._owner_epoch is not None:  # the fence, in this transaction (it holds the write lock)
                row = conn.execute(_FENCE_EPOCH).fetchone()
                if row is None or row[0] != self._owner_epoch:
                    raise Fenced(f"the shard has another owner now (epoch {row and row[0]}, ours {self._owner_epoch})")
            for batch in batches:
                self._write(conn, batch)
            history_seq = self._fill_history(conn, batches)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._history_seq = history_seq
        self._finish_wal_copy(conn)

    def _fill_history(self, conn: sqlite3.Connection, batches: list[BatchWrite]) -> int:
        """A slice of the journal's pairs into the history table, when enough wait; the new seq."""
        last = max((batch.journal[-1][0] for batch in batches if batch.journal), default=0)
        if last - self._history_seq < HISTORY_SLICE_ROWS:
            return self._history_seq
        own = sum(len(batch.journal) for batch in batches)
        up_to = min(last, self._history_seq + max(HISTORY_FILL_MIN, 2 * own))
        conn.execute(_HISTORY_FILL, (self._history_seq, up_to))
        conn.execute("UPDATE meta SET value = ? WHERE name = ?", (up_to, schema.HISTORY_META_KEY))
        return up_to

    def _write(self, conn: sqlite3.Connection, batch: BatchWrite) -> None:
        self._insert(conn, "journal", schema.JOURNAL_COLUMNS, batch.journal, upsert=False)
        self._insert(conn, "holds", schema.HOLD_COLUMNS, batch.holds, upsert=True)
        self._insert(conn, "accounts", schema.ACCOUNT_COLUMNS, _exact_accounts(batch.accounts), upsert=True)
        self._insert(conn, "outbox", schema.OUTBOX_COLUMNS, batch.outbox, upsert=False)
        self._insert(conn, "api_keys", schema.KEY_COLUMNS, batch.keys, upsert=True)  # a revocation rewrites its row
        self._insert(conn, "transfers_pending", schema.TRANSFER_COLUMNS, batch.transfers_started, upsert=False)
        if batch.moves:  # a partner move's record (rare)
            self._insert(conn, "moves", schema.MOVE_COLUMNS, batch.moves, upsert=True)
        if batch.holds_deleted:
            conn.executemany(
                "DELETE FROM holds WHERE expires_at = ? AND account_id = ? AND id = ?", batch.holds_deleted
            )
        if batch.checkpoint_seq:
            conn.execute("UPDATE meta SET value = ? WHERE name = ?", (batch.checkpoint_seq, schema.CHECKPOINT_META_KEY))
        for result, account_id, op_id, status, op_key in batch.transfers_completed:
            conn.execute(
                "UPDATE journal SET status = ?, result = ? WHERE account_id = ? AND op_key = ?",
                (status, result, account_id, op_key),
            )
            conn.execute("DELETE FROM transfers_pending WHERE account_id = ? AND op_id = ?", (account_id, op_id))

    def _insert(
        self, conn: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: list[Row], upsert: bool
    ) -> None:
        """Explicit multi-row INSERTs: one statement per ``_CHUNK`` rows, not one per row."""
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            key = (table, len(chunk))
            sql = self._sql_cache.get(key)
            if sql is None:
                sql = self._sql_cache[key] = _insert_sql(table, columns, len(chunk), upsert)
            conn.execute(sql, [value for row in chunk for value in row])

    # ---- reads ---------------------------------------------------------------------------

    def _reader_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise sqlite3.OperationalError("storage is closed")
        return self._reader

    async def load(self) -> LoadedShard:
        def read() -> LoadedShard:
            conn = self._reader_conn()
            conn.execute("BEGIN")
            try:
                accounts = _read_accounts(
                    conn.execute(f"SELECT {','.join(schema.ACCOUNT_COLUMNS)} FROM accounts").fetchall()
                )
                holds = conn.execute(
                    f"SELECT {','.join(schema.HOLD_COLUMNS)} FROM holds WHERE +status = 'pending'"  # (a scan: see above)
                ).fetchall()
                last = conn.execute(
                    "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM journal UNION ALL SELECT MAX(seq) FROM outbox)"
                ).fetchone()[0]
            finally:
                conn.execute("COMMIT")
            accounts = [
                (*row[:ACCOUNT_EXHAUSTED], bool(row[ACCOUNT_EXHAUSTED]), *row[ACCOUNT_EXHAUSTED + 1 :])
                for row in accounts
            ]
            return LoadedShard(accounts, holds, (last or 0) + 1)

        return await self._run(self._reader_thread, read)

    async def scan_accounts(self, after_id: str, limit: int) -> list[Row]:
        sql = f"SELECT {','.join(schema.ACCOUNT_COLUMNS)} FROM accounts WHERE id > ? ORDER BY id LIMIT ?"
        # ``exhausted`` comes back as 0/1: Account.from_row makes it a bool (not a second pass here).
        return await self._run(
            self._reader_thread, lambda: _read_accounts(self._reader_conn().execute(sql, (after_id, limit)).fetchall())
        )

    async def scan_pending_holds(self, after: tuple[int, str, str], limit: int) -> list[Row]:
        args = (*after, limit)
        return await self._run(
            self._reader_thread, lambda: self._reader_conn().execute(PENDING_HOLDS_PAGE, args).fetchall()
        )

    async def checkpoint_seq(self) -> int:
        sql = "SELECT value FROM meta WHERE name = ?"
        row = await self._run(
            self._reader_thread, lambda: self._reader_conn().execute(sql, (schema.CHECKPOINT_META_KEY,)).fetchone()
        )
        return int(row[0]) if row else 0

    async def scan_recovery_journal(self, after_seq: int, limit: int) -> list[Row]:
        args = (after_seq, limit)
        return await self._run(
            self._reader_thread, lambda: self._reader_conn().execute(_RECOVERY_JOURNAL_AFTER, args).fetchall()
        )

    async def pending_transfers(self) -> list[Row]:
        sql = f"SELECT {','.join(schema.TRANSFER_COLUMNS)} FROM transfers_pending ORDER BY created_at"
        return await self._run(self._reader_thread, lambda: self._reader_conn().execute(sql).fetchall())

    async def max_seq(self) -> int:
        sql = "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM journal UNION ALL SELECT MAX(seq) FROM outbox)"
        row = await self._run(self._reader_thread, lambda: self._reader_conn().execute(sql).fetchone())
        return int(row[0] or 0)

    async def load_keys(self) -> list[Row]:
        return await self._run(
            self._reader_thread,
            lambda: self._reader_conn().execute(f"SELECT {','.join(schema.KEY_COLUMNS)} FROM api_keys").fetchall(),
        )

    async def lookup(
        self, op_keys: list[tuple[str, str]], hold_keys: list[tuple[str, str]]
    ) -> tuple[list[StoredOperation], list[Row]]:
        def read() -> tuple[list[StoredOperation], list[Row]]:
            conn = self._reader_conn()
            operations = []
            for account_id, op_key in op_keys:
                row = conn.execute(
                    "SELECT fingerprint, status, result FROM journal WHERE account_id = ? AND op_key = ?",
                    (account_id, op_key),
                ).fetchone()
                if row is not None:
                    operations.append(StoredOperation(account_id, op_key, row[0], row[1], row[2]))
            holds = []
            for account_id, hold_id in hold_keys:
                keys = hold_journal_keys(hold_id)
                rows = conn.execute(_HOLD_JOURNAL_BY_KEYS, (account_id, *keys)).fetchall()
                hold = hold_from_journal(rows)
                if hold is None and placed_before_expiries(rows):  # an earlier version's: its row is in the table
                    hold = conn.execute(
                        f"SELECT {','.join(schema.HOLD_COLUMNS)} FROM holds WHERE account_id = ? AND id = ?",
                        (account_id, hold_id),
                    ).fetchone()
                if hold is not None:
                    holds.append(hold)
            return operations, holds

        return await self._run(self._reader_thread, read)

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]:
        sql, args = schema.history_query("?", account_id, limit, before_seq, since, until, history_table=True)
        return await self._run(self._reader_thread, lambda: self._reader_conn().execute(sql, args).fetchall())

    async def move_records(self, account_ids: list[str]) -> list[Row]:
        def read() -> list[Row]:
            conn, rows = self._reader_conn(), []
            for start in range(0, len(account_ids), schema.MOVE_RECORDS_CHUNK):
                chunk = account_ids[start : start + schema.MOVE_RECORDS_CHUNK]
                sql = schema.move_records_query("?", len(chunk), history_table=True)
                rows += conn.execute(sql, [*chunk, *chunk]).fetchall()
            return rows

        return await self._run(self._reader_thread, read)

    async def get_hold(self, account_id: str, hold_id: str) -> Row | None:
        _, holds = await self.lookup([], [(account_id, hold_id)])
        return holds[0] if holds else None

    async def unfinished_moves(self) -> list[tuple[Row, bytes]]:
        def read() -> list[tuple[Row, bytes]]:
            conn = self._reader_conn()
            conn.execute("BEGIN")  # the record and its parts from one snapshot
            try:
                heads = conn.execute(_MOVES_UNFINISHED).fetchall()
                return [(head, b"".join(row[0] for row in conn.execute(_MOVE_PARTS, (head[0],)))) for head in heads]
            finally:
                conn.execute("COMMIT")

        return await self._run(self._reader_thread, read)

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]:
        sql = "SELECT id FROM accounts WHERE parent_id = ? AND id > ? ORDER BY id LIMIT ?"
        rows = await self._run(
            self._reader_thread, lambda: self._reader_conn().execute(sql, (parent_id, after_id or "", limit)).fetchall()
        )
        return [row[0] for row in rows]
