"""The raw journal-insert ceiling: how many of OUR journal rows a database takes per second.

No logic, no reads: each writer builds ``rows_per_txn`` realistic ``JOURNAL_COLUMNS`` rows
(20-character account ids, op keys like ``hold:ord-0-0001234``, a ~300-byte JSON result),
inserts them with ONE statement per transaction and commits durably, until the time or the
transaction budget runs out. Each writer has its own connection and its own ``seq`` / op-key
range, so writers never conflict.

* MariaDB (asyncmy): 1..N writers in parallel. ``method`` picks how the statement is built
  and sent (see ``MYSQL_METHODS``); the default is the fastest one measured.
* SQLite (stdlib): one writer (SQLite has one writer), WAL, ``synchronous=FULL``; ``method``
  ``executemany`` (a one-row INSERT compiled once, stepped per row: the default, the faster)
  or ``multirow`` (1000-row INSERT statements with bound parameters).

``variant`` measures leaner rows for notes only (the schema is not changed):
``full`` (the real shape), ``no_result`` (empty result blob), ``no_secondary`` (journal
without its two secondary indexes), ``lean`` (both).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balance.bench.naive import (
    DEFAULT_MAX_OPS,
    LOCAL_HOSTS,
    CpuMeter,
    Deadline,
    account_id,
    journal_insert_sql,
    mysql_connect,
    mysql_scratch_database,
    mysql_url,
    now_us,
    run_workers,
    sqlite_connect,
    sqlite_scratch_file,
)
from balance.bench.results import BenchResult, make_result
from balance.storage import schema

Progress = Callable[[int], None]

# How the MariaDB rows are built and sent; each way sends ONE statement per transaction (Com_insert += 1):
#   escape      - VALUES string built in Python with typed escaping (asyncmy's escape functions), text protocol
#   executemany - cursor.executemany("INSERT ... VALUES (%s,...)"), which asyncmy rewrites into multi-row text
#   prepared    - one server-side prepared statement with rows_per_txn * 19 "?" placeholders, binary protocol
#   bulk        - MariaDB COM_STMT_BULK_EXECUTE of a prepared one-row INSERT: all rows in one command, binary
#                 protocol (a batch with an all-NULL column falls back to ``prepared``)
MYSQL_METHODS = ("escape", "executemany", "prepared", "bulk")
SQLITE_METHODS = ("multirow", "executemany")
VARIANTS = ("full", "no_result", "no_secondary", "lean")
DEFAULT_MYSQL_METHOD = "bulk"
DEFAULT_SQLITE_METHOD = "executemany"  # measured ~8% faster than one 1000-row statement
PREPARED_MAX_ROWS = 3000  # rows per prepared multi-row statement (MariaDB allows 65,535 placeholders)
SQLITE_CHUNK = 1000  # rows per SQLite statement (19,000 parameters: under the 32,766 default limit)

_COLUMNS = ",".join(schema.JOURNAL_COLUMNS)
_INSERT_PREFIX = f"INSERT INTO journal ({_COLUMNS}) VALUES "

# A primary row per kind: (weight, kind, status, has hold_id, has counterparty)
_KINDS = (
    (40, "hold", 201, True, False),
    (25, "capture", 200, True, True),
    (10, "release", 200, True, False),
    (10, "credit", 201, False, False),
    (10, "debit", 201, False, False),
    (5, "transfer", 201, False, True),
)
_KIND_CYCLE = [
    (kind, status, hold, counterparty) for weight, kind, status, hold, counterparty in _KINDS for _ in range(weight)
]
_RESULT = (
    b'{"txn":{"id":"%%s","kind":"%s","status":%d,"account_id":"%s","amount":%d,"currency":"USD",'
    b'"hold_id":%s,"counterparty_account_id":%s,"created_at":%d},'
    b'"account":{"id":"%s","balance":%d,"reserved":%d,"available":%d,"version":%d}}'
)
_POOL = 4096  # distinct random row bodies per writer (a power of two)


class JournalRows:
    """Realistic journal rows for one writer, in its own key range (``seq`` and op ids never collide).

    The random parts of the rows (accounts, amounts, balances, the answer) come from a pool made
    once; each row gets its own ``seq``, op id, op key and result bytes, so building a row costs
    about a microsecond and the benchmark measures the database, not the row factory.
    """

    def __init__(
        self, writer: int, *, with_result: bool = True, accounts: int = 10_000, seed: int | None = None
    ) -> None:
        self.writer = writer
        self.seq = (writer + 1) * 10**12
        self.n = 0
        rng = random.Random(seed)
        ids = [account_id(i) for i in range(1, accounts + 1)]
        now = now_us()
        self.pool = []
        for i in range(_POOL):
            kind, status, has_hold, has_counterparty = _KIND_CYCLE[i % len(_KIND_CYCLE)]
            aid = ids[rng.randrange(len(ids))]
            counterparty = ids[rng.randrange(len(ids))] if has_counterparty else None
            amount = rng.randrange(1, 1_000_000)
            balance = rng.randrange(0, 10**9)
            reserved = rng.randrange(0, balance + 1)
            version = rng.randrange(1, 100_000)
            result = _RESULT % (
                kind.encode(), status, aid.encode(), amount, b'"%s"' if has_hold else b"null",
                b'"%s"' % counterparty.encode() if counterparty else b"null",
                now, aid.encode(), balance, reserved, balance - reserved, version,
            )  # fmt: skip
            # One hold in four pays out to a destination account (or every row of a transaction
            # would be NULL in that column, which the bulk command cannot send: see ``send``).
            destination = ids[rng.randrange(len(ids))] if kind == "hold" and i % 4 == 0 else None
            self.pool.append((
                kind, status, has_hold, aid, counterparty, amount, balance, reserved, version,
                rng.getrandbits(63), result if with_result else None, destination,
            ))  # fmt: skip

    def take(self, count: int) -> list[tuple]:  # type: ignore[type-arg]
        pool, writer, seq, n = self.pool, self.writer, self.seq, self.n
        now = now_us()
        rows = []
        for _ in range(count):
            seq += 1
            n += 1
            kind, status, has_hold, aid, counterparty, amount, balance, reserved, version, fp, result, destination = (
                pool[n & (_POOL - 1)]
            )
            op_id = f"ord-{writer}-{n:07d}"
            if result is None:
                result = b""
            else:
                op = op_id.encode()
                result = result % ((op, op) if has_hold else (op,))
            rows.append((
                seq, aid, f"{kind}:{op_id}", kind, op_id, status, "", fp, amount, "USD",
                counterparty, op_id if has_hold else None, balance, reserved, version, now, "", b"{}", result,
                now + 900_000_000 if kind == "hold" else None, destination,  # a hold's row: its expiry, destination
                aid if kind == "hold" else None,  # ... and who placed it
            ))  # fmt: skip
        self.seq, self.n = seq, n
        return rows


# ---- statement building (MariaDB text protocol) ----------------------------------------------


def _escape_blob(value: bytes) -> str:
    """A BLOB literal: only backslash, quote and NUL need escaping inside '...' (C-speed replaces;
    asyncmy's own escape_bytes translates every byte through a table when one of 7 characters
    occurs, which a JSON answer full of double quotes always does)."""
    if b"\\" in value or b"'" in value or b"\0" in value:
        value = value.replace(b"\\", b"\\\\").replace(b"'", b"\\'").replace(b"\0", b"\\0")
    return "_binary'" + value.decode("ascii", "surrogateescape") + "'"


def typed_escaper(conn: Any) -> Callable[[tuple], str]:  # type: ignore[type-arg]
    """Format one journal row as a VALUES tuple, knowing its column types: ints formatted, strings
    escaped with asyncmy's ``escape_string`` (a no-copy fast path when nothing needs escaping),
    blobs with ``_escape_blob``. Falls back to the driver's escaping under NO_BACKSLASH_ESCAPES."""
    from asyncmy import converters

    if conn.server_status & 512:  # SERVER_STATUS_NO_BACKSLASH_ESCAPES
        return conn.escape  # type: ignore[no-any-return]
    esc = converters.escape_string
    blob = _escape_blob

    def opt(value: str | None) -> str:
        return "NULL" if value is None else "'" + esc(value) + "'"

    def row_sql(r: tuple) -> str:  # type: ignore[type-arg]
        return (
            f"({int(r[0])},'{esc(r[1])}',{opt(r[2])},'{esc(r[3])}','{esc(r[4])}',{int(r[5])},'{esc(r[6])}',"
            f"{int(r[7])},{int(r[8])},'{esc(r[9])}',{opt(r[10])},{opt(r[11])},{int(r[12])},{int(r[13])},"
            f"{int(r[14])},{int(r[15])},'{esc(r[16])}',{blob(r[17])},{blob(r[18])},"
            f"{'NULL' if r[19] is None else int(r[19])},{opt(r[20])},{opt(r[21])})"
        )

    return row_sql


def rows_sql(rows: list[tuple], row_sql: Callable[[tuple], str]) -> bytes:  # type: ignore[type-arg]
    """One multi-row INSERT statement, encoded for the wire."""
    return (_INSERT_PREFIX + ",".join([row_sql(r) for r in rows])).encode("utf8", "surrogateescape")


# ---- MariaDB -------------------------------------------------------------------------------


class _MysqlSender:
    """Sends one transaction's rows as ONE statement, the way ``method`` says."""

    def __init__(self, conn: Any, method: str) -> None:
        self.conn = conn
        self.method = method
        self.cursor = conn.cursor()
        self.row_sql = typed_escaper(conn) if method == "escape" else None
        self.statements: dict[int, Any] = {}  # prepared multi-row statements by row count
        self.single: Any = None  # the prepared one-row statement (bulk)
        self.fallbacks = 0

    async def _multirow(self, count: int) -> Any:
        stmt = self.statements.get(count)
        if stmt is None:
            one = journal_insert_sql("?")[len(_INSERT_PREFIX) :]
            stmt = self.statements[count] = await self.conn.prepare(_INSERT_PREFIX + ",".join([one] * count))
        return stmt

    async def _send_multirow(self, rows: list[tuple]) -> None:  # type: ignore[type-arg]
        # A prepared statement takes at most 65,535 placeholders: 3,000 rows of 19 columns per statement.
        for i in range(0, len(rows), PREPARED_MAX_ROWS):
            chunk = rows[i : i + PREPARED_MAX_ROWS]
            await (await self._multirow(len(chunk))).execute(tuple([v for r in chunk for v in r]))

    async def send(self, rows: list[tuple]) -> None:  # type: ignore[type-arg]
        method = self.method
        if method == "escape":
            await self.conn.query(rows_sql(rows, self.row_sql))  # type: ignore[arg-type]
        elif method == "executemany":
            await self.cursor.executemany(journal_insert_sql("%s"), rows)
        elif method == "prepared":
            await self._send_multirow(rows)
        else:  # bulk
            if self.single is None:
                self.single = await self.conn.prepare(journal_insert_sql("?"))
            try:
                await self.single.execute_bulk(rows)
            except ValueError:
                # asyncmy refuses a batch with a column NULL in every row (e.g. only holds: no
                # counterparty) before sending anything: send it as one prepared multi-row INSERT.
                self.fallbacks += 1
                await self._send_multirow(rows)

    async def close(self) -> None:
        for stmt in (*self.statements.values(), self.single):
            if stmt is not None:
                await stmt.close()


async def _mysql_writer(
    sender: _MysqlSender, rows_per_txn: int, factory: JournalRows, deadline: Deadline, max_txns: int,
    latencies: list[float], timings: dict[str, float], counter: list[int],
) -> None:  # fmt: skip
    txns = 0
    while txns < max_txns and not deadline.passed():
        start = time.perf_counter()
        rows = factory.take(rows_per_txn)
        built = time.perf_counter()
        await sender.send(rows)  # statement building (client CPU) is inside: see client_cpu
        await sender.conn.commit()
        end = time.perf_counter()
        latencies.append(end - start)
        timings["build_s"] += built - start
        timings["send_commit_s"] += end - built
        txns += 1
        counter[0] += rows_per_txn


async def _mysql_status(conn: Any) -> dict[str, int]:
    async with conn.cursor() as cur:
        await cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_insert', 'Com_stmt_execute')")
        return {name.lower(): int(value) for name, value in await cur.fetchall()}


async def _ceiling_mariadb(
    url: str, writers: int, rows_per_txn: int, duration_s: float, max_txns: int, method: str, variant: str,
    progress: Progress | None, keep: bool,
) -> BenchResult:  # fmt: skip
    if method not in MYSQL_METHODS:
        raise ValueError(f"unknown MariaDB method {method!r} ({' | '.join(MYSQL_METHODS)})")
    secondary = variant not in ("no_secondary", "lean")
    async with mysql_scratch_database(url, secondary_indexes=secondary, keep=keep) as (params, database):
        conns = [await mysql_connect(params, database) for _ in range(writers)]
        senders = [_MysqlSender(c, method) for c in conns]
        try:
            factories = [JournalRows(w, with_result=variant in ("full", "no_secondary")) for w in range(writers)]
            latencies: list[list[float]] = [[] for _ in conns]
            timings = [{"build_s": 0.0, "send_commit_s": 0.0} for _ in conns]
            counter = [0]
            before = [await _mysql_status(c) for c in conns]
            done = asyncio.Event()
            reporter = asyncio.create_task(_report(counter, progress, done))
            meter = CpuMeter(server=params["host"] in LOCAL_HOSTS)
            meter.start()
            begin = time.perf_counter()
            deadline = Deadline(begin + duration_s)
            try:
                await run_workers((
                    _mysql_writer(snd, rows_per_txn, f, deadline, max_txns, lat, t, counter)
                    for snd, f, lat, t in zip(senders, factories, latencies, timings, strict=True)
                ), deadline)  # fmt: skip
            finally:
                seconds = time.perf_counter() - begin
                cpu = meter.stop()
                done.set()
                await reporter
            after = [await _mysql_status(c) for c in conns]
            status = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) for k in before[0]}
            async with conns[0].cursor() as cur:
                await cur.execute("SELECT COUNT(*) FROM journal")
                (journal_rows,) = await cur.fetchone()
            for sender in senders:
                await sender.close()
        finally:
            for conn in conns:
                conn.close()
    txns = sum(len(lat) for lat in latencies)
    return make_result(
        "ceiling", "mariadb", f"{writers}w x {rows_per_txn}", counter[0], seconds,
        [x for lat in latencies for x in lat],
        writers=writers, rows_per_txn=rows_per_txn, method=method, variant=variant, txns=txns,
        journal_rows=int(journal_rows), com_insert=status["com_insert"], com_stmt_execute=status["com_stmt_execute"],
        bulk_fallbacks=sum(snd.fallbacks for snd in senders), **cpu,
        **{k: sum(t[k] for t in timings) for k in timings[0]},
        **({"database": database} if keep else {}),
    )  # fmt: skip


# ---- SQLite --------------------------------------------------------------------------------


def _sqlite_writer(
    conn: sqlite3.Connection, method: str, rows_per_txn: int, factory: JournalRows, deadline: Deadline,
    max_txns: int, latencies: list[float], timings: dict[str, float], counter: list[int],
) -> None:  # fmt: skip
    single = journal_insert_sql("?")
    one = single[len(_INSERT_PREFIX) :]
    statements: dict[int, str] = {}
    txns = 0
    while txns < max_txns and not deadline.passed():
        start = time.perf_counter()
        rows = factory.take(rows_per_txn)
        built = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if method == "multirow":
                for i in range(0, len(rows), SQLITE_CHUNK):
                    chunk = rows[i : i + SQLITE_CHUNK]
                    sql = statements.get(len(chunk))
                    if sql is None:
                        sql = statements[len(chunk)] = _INSERT_PREFIX + ",".join([one] * len(chunk))
                    conn.execute(sql, [v for r in chunk for v in r])
            else:
                conn.executemany(single, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        end = time.perf_counter()
        latencies.append(end - start)
        timings["build_s"] += built - start
        timings["db_s"] += end - built
        txns += 1
        counter[0] += rows_per_txn


async def _ceiling_sqlite(
    directory: str | Path | None, rows_per_txn: int, duration_s: float, max_txns: int, method: str, variant: str,
    progress: Progress | None, keep: bool,
) -> BenchResult:  # fmt: skip
    if method not in SQLITE_METHODS:
        raise ValueError(f"unknown SQLite method {method!r} ({' | '.join(SQLITE_METHODS)})")
    secondary = variant not in ("no_secondary", "lean")
    with sqlite_scratch_file(directory, secondary_indexes=secondary, keep=keep) as path:
        conn = sqlite_connect(path)
        try:
            factory = JournalRows(0, with_result=variant in ("full", "no_secondary"))
            latencies: list[float] = []
            timings = {"build_s": 0.0, "db_s": 0.0}
            counter = [0]
            done = asyncio.Event()
            reporter = asyncio.create_task(_report(counter, progress, done))
            meter = CpuMeter(server=False)
            meter.start()
            begin = time.perf_counter()
            try:
                await asyncio.to_thread(
                    _sqlite_writer, conn, method, rows_per_txn, factory, Deadline(begin + duration_s), max_txns,
                    latencies, timings, counter,
                )  # fmt: skip
            finally:
                seconds = time.perf_counter() - begin
                cpu = meter.stop()
                done.set()
                await reporter
            (journal_rows,) = conn.execute("SELECT COUNT(*) FROM journal").fetchone()
        finally:
            conn.close()
    return make_result(
        "ceiling", "sqlite", f"1w x {rows_per_txn}", counter[0], seconds, latencies,
        writers=1, rows_per_txn=rows_per_txn, method=method, variant=variant, txns=len(latencies),
        journal_rows=int(journal_rows), **cpu, **timings,
        **({"path": str(path)} if keep else {}),
    )  # fmt: skip


# ---- entry ---------------------------------------------------------------------------------


async def _report(counter: list[int], progress: Progress | None, done: asyncio.Event) -> None:
    if progress is None:
        return
    while not done.is_set():
        progress(counter[0])
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except TimeoutError:
            pass
    progress(counter[0])


async def run_ceiling(
    backend: str,
    *,
    url_or_path: str | Path | None = None,
    writers: int = 1,
    rows_per_txn: int = 1000,
    duration_s: float = 5.0,
    max_txns: int | None = None,
    method: str | None = None,
    variant: str = "full",
    progress: Progress | None = None,
    keep: bool = False,
) -> BenchResult:
    """Insert journal rows as fast as the database takes them, for ``duration_s`` seconds or
    ``max_txns`` transactions per writer, whichever ends first. ``ops`` of the result is rows.

    ``url_or_path``: a ``mysql://`` url (default ``$BALANCE_TEST_MYSQL_URL`` or root@127.0.0.1:3306)
    or, for SQLite, the directory to create the temporary database in. ``progress`` is called
    from the event loop with the number of rows committed so far (about 5 times a second).
    """
    if writers < 1 or rows_per_txn < 1 or duration_s <= 0:
        raise ValueError("writers, rows_per_txn and duration_s must be positive")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} ({' | '.join(VARIANTS)})")
    if max_txns is None:
        max_txns = max(1, DEFAULT_MAX_OPS // rows_per_txn)
    if backend == "mariadb":
        return await _ceiling_mariadb(
            str(url_or_path or mysql_url()), writers, rows_per_txn, duration_s, max_txns,
            method or DEFAULT_MYSQL_METHOD, variant, progress, keep,
        )  # fmt: skip
    if backend == "sqlite":
        if writers != 1:
            raise ValueError("SQLite has one writer: writers must be 1")
        return await _ceiling_sqlite(
            url_or_path, rows_per_txn, duration_s, max_txns, method or DEFAULT_SQLITE_METHOD, variant, progress, keep
        )
    raise ValueError(f"unknown backend {backend!r} (mariadb | sqlite)")
