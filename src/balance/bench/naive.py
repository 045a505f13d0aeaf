"""The naive locking design, measured honestly: one database transaction per hold.

Each hold is ``SELECT ... FOR UPDATE`` on the account, a funds check in Python, an
``UPDATE accounts``, an ``INSERT INTO journal`` of a full ``JOURNAL_COLUMNS`` row, and a
durable ``COMMIT``, run by ``clients`` concurrent connections:

* MariaDB: asyncmy, one connection per client coroutine, a fresh database with the tables
  and indexes of ``schema`` (InnoDB), dropped afterwards.
* SQLite: no ``FOR UPDATE``; ``BEGIN IMMEDIATE`` takes the database write lock instead.
  One thread and connection per client (WAL, ``synchronous=FULL``, ``busy_timeout``), on a
  fresh temporary file, deleted afterwards.

Scenarios: ``hot`` (every hold on ONE account: the row lock serializes them) and
``uniform`` (a random account out of 10,000 per hold).

This module also holds the fixtures the ceiling benchmark shares: scratch databases,
connections, and realistic journal rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from balance.bench.results import BenchResult, make_result
from balance.storage import mariadb_url, schema
from balance.storage.sqlite import WAL_AUTOCHECKPOINT_PAGES

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306"
UNIFORM_ACCOUNTS = 10_000
DEFAULT_MAX_OPS = 10_000_000  # hard bound on any run, whatever the duration
HOT_BALANCE = 10**15  # large enough that no hold is ever refused
MYSQL_RETRYABLE = (1205, 1213)  # lock wait timeout, deadlock
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # a server whose CPU time /proc shows

Progress = Callable[[int], None]


def mysql_url() -> str:
    return os.environ.get("BALANCE_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)


def now_us() -> int:
    return time.time_ns() // 1000


# ---- MariaDB fixtures --------------------------------------------------------------------


def parse_mysql_url(url: str) -> dict[str, Any]:
    """``mysql://user:password@host:port`` (also ``mariadb://``) -> asyncmy connect() arguments."""
    return mariadb_url.connect_kwargs(url)


async def mysql_connect(params: dict[str, Any], database: str | None = None, **kwargs: Any) -> Any:
    import asyncmy

    kwargs.setdefault("autocommit", False)
    return await asyncmy.connect(**params, database=database, **kwargs)


def mysql_table_ddl(table: str, ddl: str) -> str:
    return f"CREATE TABLE {table} ({ddl}) ENGINE=InnoDB"


def mysql_index_ddl(name: str, table: str, columns: str, unique: bool) -> str:
    return f"CREATE {'UNIQUE INDEX' if unique else 'INDEX'} {name} ON {table} ({columns})"


@asynccontextmanager
async def mysql_scratch_database(
    url: str, *, secondary_indexes: bool = True, keep: bool = False
) -> AsyncIterator[tuple[dict[str, Any], str]]:
    """A fresh database with every table and index of ``schema``; dropped on exit unless ``keep``.

    ``secondary_indexes=False`` leaves out the journal's secondary indexes (a lean variant
    measured for notes only). Yields ``(connect params, database name)``.
    """
    params = parse_mysql_url(url)
    name = f"bench_baseline_{os.getpid()}_{secrets.token_hex(4)}"
    admin = await mysql_connect(params, autocommit=True)
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {name}")
            try:
                await cur.execute(f"USE {name}")
                for table, ddl in schema.TABLES.items():
                    await cur.execute(mysql_table_ddl(table, ddl))
                for index in schema.indexes("mariadb"):
                    if secondary_indexes or index[1] != "journal":
                        await cur.execute(mysql_index_ddl(*index))
                yield params, name
            finally:
                if not keep:
                    await cur.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        admin.close()


async def mysql_reachable(url: str | None = None, timeout_s: float = 2.0) -> bool:
    try:
        conn = await asyncio.wait_for(mysql_connect(parse_mysql_url(url or mysql_url())), timeout_s)
    except Exception:
        return False
    conn.close()
    return True


def find_server_pid(names: tuple[str, ...] = ("mariadbd", "mysqld")) -> int | None:
    """The pid of a local MariaDB server process (to read its CPU time), or None."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() in names:
                        return int(entry)
            except OSError:
                continue
    return None


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, iowait) CPU seconds of the whole machine so far, summed over cores (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, iowait / tick


class CpuMeter:
    """CPU used by this process and by a local MariaDB server between ``start`` and ``stop``,
    as a fraction of the wall time (1.0 = one core busy)."""

    def __init__(self, server: bool) -> None:
        self.server_pid = find_server_pid() if server else None

    def start(self) -> None:
        self.wall0 = time.perf_counter()
        self.client0 = time.process_time()
        self.server0 = process_cpu_seconds(self.server_pid)
        self.machine0 = machine_cpu_seconds()

    def stop(self) -> dict[str, float]:
        """``client_cpu``, ``server_cpu``, ``machine_cpu`` (every core's busy time: how full the
        machine was, out of ``os.cpu_count()``), and ``other_cpu``: the rest of the machine's busy
        CPU (other processes, the kernel's share not charged to either): high means a noisy run."""
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        client = time.process_time() - self.client0
        out = {"client_cpu": client / wall}
        server1 = process_cpu_seconds(self.server_pid)
        server = 0.0
        if self.server0 is not None and server1 is not None:
            server = server1 - self.server0
            out["server_cpu"] = server / wall
        machine1 = machine_cpu_seconds()
        if self.machine0 is not None and machine1 is not None:
            machine = machine1[0] - self.machine0[0]
            out["machine_cpu"] = machine / wall
            out["other_cpu"] = max(0.0, machine - client - server) / wall
            out["iowait"] = (machine1[1] - self.machine0[1]) / wall
        return out


# ---- SQLite fixtures ---------------------------------------------------------------------


def sqlite_table_ddl(table: str, ddl: str) -> str:
    ddl = ddl.replace("BOOLEAN", "INTEGER").replace("BIGINT", "INTEGER").replace("SMALLINT", "INTEGER")
    return f"CREATE TABLE {table} ({ddl})"


def sqlite_connect(path: Path | str, busy_timeout_ms: int = 60_000) -> sqlite3.Connection:
    """Autocommit mode (transactions are explicit), WAL, ``synchronous=FULL``, the service's WAL checkpoint size."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")  # as the service's writer
    return conn


@contextmanager
def sqlite_scratch_file(
    directory: Path | str | None = None, *, secondary_indexes: bool = True, keep: bool = False
) -> Iterator[Path]:
    """A fresh SQLite file with every table and index of ``schema`` in a new temporary directory
    (under ``directory``, default the system temp dir); the directory is deleted on exit unless ``keep``."""
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-", dir=directory))
    path = tmp / "bench.db"
    try:
        conn = sqlite_connect(path)
        try:
            for table, ddl in schema.TABLES.items():
                conn.execute(sqlite_table_ddl(table, ddl))
            for name, table, columns, unique in schema.indexes("sqlite"):
                if secondary_indexes or table != "journal":
                    conn.execute(f"CREATE {'UNIQUE INDEX' if unique else 'INDEX'} {name} ON {table} ({columns})")
        finally:
            conn.close()
        yield path
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


# ---- rows --------------------------------------------------------------------------------


def account_id(i: int) -> str:
    """20 characters, like a real account id."""
    return f"acct-{i:015d}"


def account_row(aid: str, balance: int, now: int) -> tuple:  # type: ignore[type-arg]
    row = (
        aid, None, "user", "EU", "USD", f"bench account {aid}", "active", balance, 0, 0, False, 1, now, now,
        b'{"tier":"gold","owner":"bench"}', None,
    )  # fmt: skip
    assert len(row) == len(schema.ACCOUNT_COLUMNS)
    return row


def hold_result(
    aid: str, hold_id: str, amount: int, balance: int, reserved: int, credit_limit: int, version: int, now: int
) -> bytes:
    """The encoded answer stored with the journal row (what a replay returns): ~300 bytes of JSON."""
    return (
        b'{"hold":{"id":"%s","account_id":"%s","amount":%d,"captured_amount":0,"currency":"USD",'
        b'"status":"pending","destination_account_id":null,"expires_at":%d,"created_at":%d,'
        b'"description":"","metadata":{}},"account":{"id":"%s","balance":%d,"reserved":%d,'
        b'"available":%d,"version":%d}}'
        % (
            hold_id.encode(), aid.encode(), amount, now + 600_000_000, now, aid.encode(), balance, reserved,
            balance + credit_limit - reserved, version,
        )
    )  # fmt: skip


def hold_journal_row(
    seq: int,
    aid: str,
    hold_id: str,
    amount: int,
    balance: int,
    reserved_after: int,
    credit_limit: int,
    version: int,
    now: int,
) -> tuple:  # type: ignore[type-arg]
    """A hold's primary journal row, in ``JOURNAL_COLUMNS`` order."""
    return (
        seq, aid, f"hold:{hold_id}", "hold", hold_id, 201, "", random.getrandbits(63), amount, "USD", None, hold_id,
        balance, reserved_after, version, now, "", b"{}",
        hold_result(aid, hold_id, amount, balance, reserved_after, credit_limit, version, now),
        now + 900_000_000, None, None,  # expires_at, destination_account_id, placed_by
    )  # fmt: skip


_JOURNAL_INSERT = f"INSERT INTO journal ({','.join(schema.JOURNAL_COLUMNS)}) VALUES "


def journal_insert_sql(placeholder: str) -> str:
    return _JOURNAL_INSERT + "(" + ",".join([placeholder] * len(schema.JOURNAL_COLUMNS)) + ")"


# ---- the naive design ----------------------------------------------------------------------


class Deadline:
    """When the workers of a run stop: at ``at`` (perf_counter), or at once after ``stop()``."""

    def __init__(self, at: float = float("inf")) -> None:
        self.at = at

    def passed(self) -> bool:
        return time.perf_counter() >= self.at

    def stop(self) -> None:
        self.at = float("-inf")


async def run_workers(workers: Iterable[Awaitable[None]], deadline: Deadline) -> None:
    """Await every worker (coroutines or thread futures). The first failure stops the others
    through ``deadline`` and is raised once all of them have ended: no worker is left running."""

    async def guarded(worker: Awaitable[None]) -> None:
        try:
            await worker
        except BaseException:
            deadline.stop()
            raise

    results = await asyncio.gather(*(guarded(w) for w in workers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class _Shared:
    """Counters shared by the workers of one run (asyncio tasks, or threads under the GIL)."""

    def __init__(self, max_ops: int) -> None:
        self.deadline = Deadline()
        self.max_ops = max_ops
        self.ops = 0
        self.refused = 0
        self.retries = 0
        self.amount = 0
        self.seqs = itertools.count(1)
        self.lock = threading.Lock()
        self.latencies: list[list[float]] = []

    def more(self) -> bool:
        return self.ops < self.max_ops and not self.deadline.passed()


def _accounts(scenario: str) -> list[str]:
    if scenario == "hot":
        return [account_id(1)]
    if scenario == "uniform":
        return [account_id(i) for i in range(1, UNIFORM_ACCOUNTS + 1)]
    raise ValueError(f"unknown scenario {scenario!r} (hot | uniform)")


async def _report(shared: _Shared, progress: Progress | None, done: asyncio.Event) -> None:
    if progress is None:
        return
    while not done.is_set():
        progress(shared.ops)
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except TimeoutError:
            pass
    progress(shared.ops)


async def run_naive(
    backend: str,
    *,
    url_or_path: str | Path | None = None,
    scenario: str = "hot",
    clients: int = 16,
    duration_s: float = 5.0,
    max_ops: int = DEFAULT_MAX_OPS,
    progress: Progress | None = None,
    keep: bool = False,
) -> BenchResult:
    """Run the naive design for ``duration_s`` seconds or ``max_ops`` holds, whichever ends first.

    ``url_or_path``: a ``mysql://`` url (default ``$BALANCE_TEST_MYSQL_URL`` or root@127.0.0.1:3306)
    or, for SQLite, the directory to create the temporary database in. ``progress`` is called
    from the event loop with the number of holds committed so far (about 5 times a second).
    ``keep`` leaves the database behind (its name or path is in ``extra``) for inspection.
    """
    if clients < 1 or duration_s <= 0 or max_ops < 1:
        raise ValueError("clients, duration_s and max_ops must be positive")
    if backend == "mariadb":
        return await _naive_mariadb(
            str(url_or_path or mysql_url()), scenario, clients, duration_s, max_ops, progress, keep
        )
    if backend == "sqlite":
        return await _naive_sqlite(url_or_path, scenario, clients, duration_s, max_ops, progress, keep)
    raise ValueError(f"unknown backend {backend!r} (mariadb | sqlite)")


def _result(backend: str, scenario: str, clients: int, shared: _Shared, seconds: float, **extra: Any) -> BenchResult:
    latencies = [x for worker in shared.latencies for x in worker]
    per_client = [len(worker) for worker in shared.latencies]
    return make_result(
        "naive", backend, scenario, shared.ops, seconds, latencies,
        clients=clients, max_ms=max(latencies, default=0.0) * 1000, client_ops_min=min(per_client),
        client_ops_max=max(per_client), refused=shared.refused, retries=shared.retries, amount_sum=shared.amount,
        **extra,
    )  # fmt: skip


# -- MariaDB --

_MY_SELECT = "SELECT balance, reserved, credit_limit, version FROM accounts WHERE id = %s FOR UPDATE"
_MY_UPDATE = "UPDATE accounts SET reserved = reserved + %s, version = version + 1, updated_at = %s WHERE id = %s"
_MY_INSERT = journal_insert_sql("%s")


async def _naive_mariadb(
    url: str, scenario: str, clients: int, duration_s: float, max_ops: int, progress: Progress | None, keep: bool
) -> BenchResult:
    import asyncmy.errors

    accounts = _accounts(scenario)
    async with mysql_scratch_database(url, keep=keep) as (params, database):
        conns = [await mysql_connect(params, database) for _ in range(clients)]
        try:
            now = now_us()
            async with conns[0].cursor() as cur:
                rows = [account_row(a, HOT_BALANCE, now) for a in accounts]
                for start in range(0, len(rows), 1000):
                    await cur.executemany(
                        f"INSERT INTO accounts ({','.join(schema.ACCOUNT_COLUMNS)}) VALUES "
                        f"({','.join(['%s'] * len(schema.ACCOUNT_COLUMNS))})",
                        rows[start : start + 1000],
                    )
            await conns[0].commit()
            shared = _Shared(max_ops)
            shared.latencies = [[] for _ in conns]

            async def worker(conn: Any, latencies: list[float]) -> None:
                rng = random.Random()
                cur = conn.cursor()
                while shared.more():
                    aid = accounts[0] if len(accounts) == 1 else rng.choice(accounts)
                    amount = rng.randint(1, 10_000)
                    seq = next(shared.seqs)
                    start = time.perf_counter()
                    try:
                        await cur.execute(_MY_SELECT, (aid,))
                        balance, reserved, credit_limit, version = await cur.fetchone()
                        if balance + credit_limit - reserved < amount:
                            await conn.rollback()
                            shared.refused += 1
                            continue
                        now = now_us()
                        await cur.execute(_MY_UPDATE, (amount, now, aid))
                        await cur.execute(
                            _MY_INSERT,
                            hold_journal_row(seq, aid, f"ord-{seq:06d}", amount, balance, reserved + amount,
                                             credit_limit, version + 1, now),
                        )  # fmt: skip
                        await conn.commit()
                    except asyncmy.errors.OperationalError as exc:
                        if exc.args and exc.args[0] in MYSQL_RETRYABLE:
                            await conn.rollback()
                            shared.retries += 1
                            continue
                        raise
                    latencies.append(time.perf_counter() - start)
                    shared.ops += 1
                    shared.amount += amount

            done = asyncio.Event()
            reporter = asyncio.create_task(_report(shared, progress, done))
            meter = CpuMeter(server=params["host"] in LOCAL_HOSTS)
            meter.start()
            begin = time.perf_counter()
            shared.deadline.at = begin + duration_s
            try:
                await run_workers(
                    (worker(c, lat) for c, lat in zip(conns, shared.latencies, strict=True)), shared.deadline
                )
            finally:
                seconds = time.perf_counter() - begin
                cpu = meter.stop()
                done.set()
                await reporter

            async with conns[0].cursor() as cur:
                await conns[0].commit()  # a fresh snapshot
                await cur.execute("SELECT COUNT(*) FROM journal")
                (journal_rows,) = await cur.fetchone()
                await cur.execute("SELECT COALESCE(SUM(reserved), 0), COALESCE(SUM(version - 1), 0) FROM accounts")
                reserved_sum, versions = await cur.fetchone()
        finally:
            for conn in conns:
                conn.close()
        return _result(
            "mariadb", scenario, clients, shared, seconds,
            journal_rows=int(journal_rows), reserved_sum=int(reserved_sum), version_bumps=int(versions), **cpu,
            **({"database": database} if keep else {}),
        )  # fmt: skip


# -- SQLite --

_SQ_SELECT = "SELECT balance, reserved, credit_limit, version FROM accounts WHERE id = ?"
_SQ_UPDATE = "UPDATE accounts SET reserved = reserved + ?, version = version + 1, updated_at = ? WHERE id = ?"
_SQ_INSERT = journal_insert_sql("?")


async def _naive_sqlite(
    directory: str | Path | None, scenario: str, clients: int, duration_s: float, max_ops: int,
    progress: Progress | None, keep: bool,
) -> BenchResult:  # fmt: skip
    accounts = _accounts(scenario)
    with sqlite_scratch_file(directory, keep=keep) as path:
        conns = [sqlite_connect(path) for _ in range(clients)]
        try:
            now = now_us()
            conns[0].execute("BEGIN IMMEDIATE")
            conns[0].executemany(
                f"INSERT INTO accounts ({','.join(schema.ACCOUNT_COLUMNS)}) VALUES "
                f"({','.join('?' * len(schema.ACCOUNT_COLUMNS))})",
                [account_row(a, HOT_BALANCE, now) for a in accounts],
            )
            conns[0].execute("COMMIT")

            shared = _Shared(max_ops)
            shared.latencies = [[] for _ in conns]

            def worker(conn: sqlite3.Connection, latencies: list[float]) -> None:
                rng = random.Random()
                while shared.more():
                    aid = accounts[0] if len(accounts) == 1 else rng.choice(accounts)
                    amount = rng.randint(1, 10_000)
                    seq = next(shared.seqs)
                    start = time.perf_counter()
                    conn.execute("BEGIN IMMEDIATE")  # the write lock: SQLite's FOR UPDATE
                    try:
                        balance, reserved, credit_limit, version = conn.execute(_SQ_SELECT, (aid,)).fetchone()
                        if balance + credit_limit - reserved < amount:
                            conn.execute("ROLLBACK")
                            with shared.lock:
                                shared.refused += 1
                            continue
                        now = now_us()
                        conn.execute(_SQ_UPDATE, (amount, now, aid))
                        conn.execute(
                            _SQ_INSERT,
                            hold_journal_row(seq, aid, f"ord-{seq:06d}", amount, balance, reserved + amount,
                                             credit_limit, version + 1, now),
                        )  # fmt: skip
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    latencies.append(time.perf_counter() - start)
                    with shared.lock:
                        shared.ops += 1
                        shared.amount += amount

            loop = asyncio.get_running_loop()
            done = asyncio.Event()
            reporter = asyncio.create_task(_report(shared, progress, done))
            meter = CpuMeter(server=False)
            with ThreadPoolExecutor(clients, thread_name_prefix="naive-sqlite") as pool:
                meter.start()
                begin = time.perf_counter()
                shared.deadline.at = begin + duration_s
                try:
                    await run_workers(
                        (
                            loop.run_in_executor(pool, worker, c, lat)
                            for c, lat in zip(conns, shared.latencies, strict=True)
                        ),
                        shared.deadline,
                    )
                finally:
                    seconds = time.perf_counter() - begin
                    cpu = meter.stop()
                    done.set()
                    await reporter

            (journal_rows,) = conns[0].execute("SELECT COUNT(*) FROM journal").fetchone()
            reserved_sum, versions = (
                conns[0]
                .execute("SELECT COALESCE(SUM(reserved), 0), COALESCE(SUM(version - 1), 0) FROM accounts")
                .fetchone()
            )
        finally:
            for conn in conns:
                conn.close()
        return _result(
            "sqlite", scenario, clients, shared, seconds,
            journal_rows=int(journal_rows), reserved_sum=int(reserved_sum), version_bumps=int(versions), **cpu,
            **({"path": str(path)} if keep else {}),
        )  # fmt: skip
