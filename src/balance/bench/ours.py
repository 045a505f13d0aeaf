"""Our service under load: the engine in process, single-operation HTTP (wrk), the batch endpoint.

Scenarios (the same for every mode):
- ``hot``: one account; every operation is a hold, then its capture (80%) or release (20%).
- ``uniform``: the same on 10,000 accounts picked at random.
- ``mix``: 80% hold→capture, 15% hold→release, 5% credits and transfers, on 1,000 accounts
  (partners with children, so transfers go parent↔child on one shard).
- ``pending-hot`` / ``pending-10k``: holds only, never settled (they stay pending for their
  15 minutes), on one account / 10,000: a gateway's open holds, by the same load generators as
  ``hot``, so that the two maxima can be set side by side (``tools/side_by_side.py ...
  scenario=hot,pending-hot``).

Every operation is durable before it is answered: SQLite WAL with ``synchronous=FULL``,
MariaDB with ``innodb_flush_log_at_trx_commit=1`` (checked and reported).
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec

from balance.bench import wrk
from balance.bench.naive import CpuMeter, mysql_connect, mysql_url, parse_mysql_url
from balance.bench.results import BenchResult, make_result
from balance.domain import commands as c
from balance.engine.runtime import tuned
from balance.engine.shard import ShardEngine
from balance.storage.base import ShardStorage
from balance.storage.mariadb import from_url
from balance.storage.mariadb_url import with_database
from balance.storage.sqlite import SqliteShardStorage
from balance.storage.sqlite import connect as connect_shard_file

Progress = Callable[[int], None]
ADMIN_KEY = "bench-admin"
SCENARIO_ACCOUNTS = {"hot": 1, "uniform": 10_000, "mix": 1_000, "pending-hot": 1, "pending-10k": 10_000}
# Holds that are never settled, measured by the same load generators as ``hot`` (issue 18's
# "throughput not lower than hot"): the open-loop tail scenarios of the same names are in tail.py.
PENDING = ("pending-hot", "pending-10k")
FUNDS = 10**12  # enough that no hold is refused (x 10,000 accounts stays within BIGINT)


# ---- databases -------------------------------------------------------------------------


@asynccontextmanager
async def scratch_storage(backend: str, work_dir: Path) -> Any:
    """A fresh shard database (``ShardStorage``), removed afterwards."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="bench-", dir=work_dir))
        try:
            yield SqliteShardStorage(directory / "shard-0.db"), {"BALANCE_DATA_DIR": str(directory)}
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    name = f"balance_bench_{uuid.uuid4().hex[:8]}"
    url = with_database(mysql_url(), name)
    try:
        yield from_url(url, 0), {"BALANCE_DB_URL": url}
    finally:
        await _drop_mariadb(url, f"{name}_s0")


async def _drop_mariadb(url: str, database: str) -> None:
    import asyncmy

    from balance.bench.naive import parse_mysql_url

    params = parse_mysql_url(url)
    params.pop("db", None)
    params.pop("database", None)
    conn = await asyncmy.connect(**params)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        conn.close()


# ---- the engine in process ---------------------------------------------------------------


def _accounts_commands(scenario: str) -> tuple[list[c.Command], list[str], dict[str, str]]:
    """Create and fund the scenario's accounts; ``parents`` maps a child to its parent."""
    count = SCENARIO_ACCOUNTS[scenario]
    commands: list[c.Command] = []
    ids: list[str] = []
    parents: dict[str, str] = {}
    for i in range(count):
        parent = None if scenario != "mix" or i % 10 == 0 else ids[i - i % 10]
        account_id = f"US-0-{i:016x}"
        commands.append(c.CreateAccount(account_id, parent, "partner", "US", "USD", "", 0, b"{}"))
        commands.append(c.Credit(account_id, "fund", FUNDS))
        ids.append(account_id)
        if parent is not None:
            parents[account_id] = parent
    return commands, ids, parents


class Workload:
    """The scenario's next operations for one client: a hold, then what follows it."""

    def __init__(self, scenario: str, ids: list[str], parents: dict[str, str], tag: str, seed: int) -> None:
        self.scenario, self.ids, self.parents, self.tag = scenario, ids, parents, tag
        self.random = random.Random(seed)
        self.counter = 0

    def flows(self) -> Iterator[list[c.Command]]:
        """Each flow is a list of commands that must run in order (a hold, then its capture)."""
        while True:
            self.counter += 1
            op_id = f"{self.tag}-{self.counter}"
            account = self.ids[0] if self.scenario in ("hot", "pending-hot") else self.random.choice(self.ids)
            if self.scenario in PENDING:
                yield [c.PlaceHold(account, op_id, 1, 900)]
                continue
            roll = self.random.random()
            if self.scenario == "mix" and roll >= 0.95:
                if roll >= 0.975 or account not in self.parents:
                    yield [c.Credit(account, op_id, 100)]
                else:
                    yield [c.Transfer(op_id, self.parents[account], account, 1, "USD")]
                continue
            release = roll >= 0.8  # 80% captured; the rest (15% of the mix) released
            settle: c.Command = c.ReleaseHold(account, op_id) if release else c.CaptureHold(account, op_id)
            yield [c.PlaceHold(account, op_id, 1, 900), settle]


async def run_engine(
    backend: str, scenario: str, *, clients: int, duration_s: float, work_dir: Path, progress: Progress | None = None
) -> BenchResult:
    """The shard writer in this process: ``clients`` tasks, each waiting for its answer."""
    async with scratch_storage(backend, work_dir) as (storage, _):
        with tuned():  # as bootstrap.build_service does for the server
            return await _run_engine(backend, scenario, storage, clients, duration_s, progress)


async def _run_engine(
    backend: str, scenario: str, storage: ShardStorage, clients: int, duration_s: float, progress: Progress | None
) -> BenchResult:
    """``clients`` tasks, each waiting for its answer, against an engine on ``storage``."""
    fence_epoch = int(os.environ.get("BALANCE_BENCH_FENCE_EPOCH") or 0)  # a fleet node's fence guard, or none
    if fence_epoch:
        storage.fence_with(fence_epoch)
    engine = ShardEngine(0, storage, sweep_interval_s=3600)
    await engine.start()
    try:
        setup, ids, parents = _accounts_commands(scenario)
        for start in range(0, len(setup), 8000):
            replies = await asyncio.gather(*(engine.enqueue(cmd) for cmd in setup[start : start + 8000]))
            assert all(r.status == 201 for r in replies), "setup failed"
        latencies: list[float] = []
        ops = 0
        deadline = time.perf_counter() + duration_s
        meter = CpuMeter(server=backend == "mariadb")
        meter.start()
        started = time.perf_counter()

        async def client(k: int) -> None:
            nonlocal ops
            for flow in Workload(scenario, ids, parents, f"e{k}", k).flows():
                for command in flow:
                    t0 = time.perf_counter()
                    reply = await engine.execute(command)
                    latencies.append(time.perf_counter() - t0)
                    if reply.status >= 300:
                        raise RuntimeError(f"{command}: {reply.status} {reply.body[:200]!r}")
                    ops += 1
                if time.perf_counter() >= deadline:
                    return

        reporter = asyncio.create_task(_report(lambda: ops, progress))
        await asyncio.gather(*(client(k) for k in range(clients)))
        reporter.cancel()
        seconds = time.perf_counter() - started
        cpu = meter.stop()
        engine.ledger.check_invariants()
    finally:
        await engine.stop()
    return make_result("engine", backend, scenario, ops, seconds, latencies, clients=clients, **cpu)


async def _report(count: Callable[[], int], progress: Progress | None) -> None:
    while progress is not None:
        progress(count())
        await asyncio.sleep(0.2)


# ---- a real server process ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVER_PYTHON_ENV = "BALANCE_BENCH_SERVER_PYTHON"
"""The Python that runs the measured server: another checkout's venv measures that code side by side."""


@contextmanager
def server_process(env_extra: dict[str, str], log_path: Path, python: str | None = None) -> Iterator[tuple[str, int]]:
    """``balance-service run`` in its own process (``python``: another checkout's); yields (base url, pid)."""
    port = _free_port()
    env = {**os.environ, **env_extra, "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": ADMIN_KEY}
    with open(log_path, "ab") as log:
        python = python or os.environ.get(SERVER_PYTHON_ENV) or sys.executable
        process = subprocess.Popen([python, "-m", "balance", "run"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}); see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the server did not become ready; see {log_path}")
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def _http_setup(client: httpx.AsyncClient, scenario: str) -> tuple[list[str], dict[str, str]]:
    """Create and fund the scenario's accounts through the API (batches for the credits)."""
    count = SCENARIO_ACCOUNTS[scenario]
    ids: list[str] = []
    parents: dict[str, str] = {}
    for i in range(count):
        body: dict[str, Any] = {"kind": "partner", "region": "US", "currency": "USD"}
        if scenario == "mix" and i % 10:
            body["parent_id"] = ids[i - i % 10]
        response = await client.post("/v1/accounts", json=body)
        response.raise_for_status()
        ids.append(response.json()["id"])
        if "parent_id" in body:
            parents[ids[-1]] = body["parent_id"]
    for start in range(0, count, 8000):
        ops = [{"op": "credit", "account_id": a, "id": "fund", "amount": FUNDS} for a in ids[start : start + 8000]]
        response = await client.post("/v1/batch", json={"operations": ops}, timeout=120)
        response.raise_for_status()
    return ids, parents


async def run_http_single(
    backend: str, scenario: str, *, clients: int, duration_s: float, work_dir: Path, progress: Progress | None = None
) -> BenchResult:
    """Single-operation requests from ``clients`` keep-alive connections (wrk), real server process."""
    if not wrk.available():
        raise RuntimeError("wrk is not installed (apt-get install wrk): it is the load generator for this mode")
    mix = {
        "hot": wrk.HOLD_THEN_SETTLE,
        "uniform": wrk.HOLD_THEN_SETTLE,
        "mix": wrk.REALISTIC,
        **dict.fromkeys(PENDING, wrk.HOLDS_ONLY),
    }[scenario]
    async with scratch_storage(backend, work_dir) as (_, env):
        with server_process(env, work_dir / "bench-server.log") as (url, pid):
            async with httpx.AsyncClient(base_url=url, headers=_auth()) as client:
                ids, _ = await _http_setup(client, scenario)
            meter = CpuMeter(server=backend == "mariadb")
            cpu0 = process_cpu_s(pid)
            meter.start()
            stop = asyncio.Event()
            ticker = asyncio.create_task(_tick(stop, duration_s, progress))
            result = await asyncio.to_thread(
                wrk.run_wrk, url, ADMIN_KEY, ids, mix=mix, clients=clients, duration_s=duration_s,
                tag=f"w{uuid.uuid4().hex[:6]}",
            )  # fmt: skip
            stop.set()
            await ticker
            cpu = meter.stop()
            server_cpu = (process_cpu_s(pid) - cpu0) / result.seconds
            rss = _peak_rss_bytes(pid)
    return BenchResult(
        name="http-single", backend=backend, scenario=scenario, ops=result.requests, seconds=result.seconds,
        ops_per_s=result.requests / result.seconds, p50_ms=result.p50_ms, p95_ms=result.p95_ms,
        p99_ms=result.p99_ms,
        extra={
            "clients": clients, "errors": result.errors, "loadgen_cpu": result.cpu_s / result.seconds,
            "service_cpu": server_cpu, "db_cpu": cpu.get("server_cpu", 0.0), "peak_rss_mb": rss / 2**20,
            "machine_cpu": cpu.get("machine_cpu"),
        },
    )  # fmt: skip


async def _tick(stop: asyncio.Event, duration_s: float, progress: Progress | None) -> None:
    started = time.perf_counter()
    while not stop.is_set():
        if progress is not None:
            progress(int(min(duration_s, time.perf_counter() - started) * 1000))
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


_encoder = msgspec.json.Encoder()


class _Result(msgspec.Struct):
    status: int


class _BatchAnswer(msgspec.Struct):
    """What the load generator reads of a batch answer: every status (each body is skipped
    unparsed; building ~700 bytes of dicts per op made the generator a third of a core)."""

    results: list[_Result]


_answer_decoder = msgspec.json.Decoder(_BatchAnswer)


def _batch_bodies(scenario: str, ids: list[str], parents: dict[str, str], size: int, tag: str) -> Iterator[bytes]:
    """Alternating batches: ``size`` holds, then the captures/releases of those holds (and
    the mix's credits and transfers). Ops are counted one by one."""
    workload = Workload(scenario, ids, parents, tag, hash(tag) & 0xFFFF)
    flows = workload.flows()
    while True:
        firsts: list[dict[str, Any]] = []
        seconds: list[dict[str, Any]] = []
        while len(firsts) < size:
            flow = next(flows)
            firsts.append(_op(flow[0]))
            if len(flow) > 1:
                seconds.append(_op(flow[1]))
        yield _encoder.encode({"operations": firsts})
        if seconds:
            yield _encoder.encode({"operations": seconds})


def _op(command: c.Command) -> dict[str, Any]:
    if isinstance(command, c.PlaceHold):
        return {"op": "hold", "account_id": command.account_id, "id": command.op_id, "amount": command.amount}
    if isinstance(command, c.CaptureHold):
        return {"op": "capture", "account_id": command.account_id, "hold_id": command.hold_id}
    if isinstance(command, c.ReleaseHold):
        return {"op": "release", "account_id": command.account_id, "hold_id": command.hold_id}
    if isinstance(command, c.Credit):
        return {"op": "credit", "account_id": command.account_id, "id": command.op_id, "amount": command.amount}
    assert isinstance(command, c.Transfer)
    return {
        "op": "transfer", "id": command.op_id, "from_account_id": command.from_account_id,
        "to_account_id": command.to_account_id, "amount": command.amount, "currency": command.currency,
    }  # fmt: skip


async def run_http_batch(
    backend: str, scenario: str, *, batch_size: int, senders: int, duration_s: float, work_dir: Path,
    progress: Progress | None = None,
) -> BenchResult:  # fmt: skip
    """The batch endpoint: ``senders`` concurrent clients, each sending batches one after another."""
    async with scratch_storage(backend, work_dir) as (_, env):
        with server_process(env, work_dir / "bench-server.log") as (url, pid):
            limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
            async with httpx.AsyncClient(base_url=url, headers=_auth(), limits=limits, timeout=120) as client:
                ids, parents = await _http_setup(client, scenario)
                ops = 0
                latencies: list[float] = []
                failures = 0
                deadline = time.perf_counter() + duration_s
                meter = CpuMeter(server=backend == "mariadb")
                cpu0 = process_cpu_s(pid)
                own0 = resource.getrusage(resource.RUSAGE_SELF)
                meter.start()
                started = time.perf_counter()

                async def sender(k: int) -> None:
                    nonlocal ops, failures
                    bodies = _batch_bodies(scenario, ids, parents, batch_size, f"b{k}-{uuid.uuid4().hex[:4]}")
                    while time.perf_counter() < deadline:
                        body = next(bodies)
                        t0 = time.perf_counter()
                        response = await client.post(
                            "/v1/batch", content=body, headers={"content-type": "application/json"}
                        )
                        latencies.append(time.perf_counter() - t0)
                        response.raise_for_status()
                        results = _answer_decoder.decode(response.content).results
                        failures += sum(1 for r in results if r.status >= 300)
                        ops += len(results)

                reporter = asyncio.create_task(_report(lambda: ops, progress))
                await asyncio.gather(*(sender(k) for k in range(senders)))
                reporter.cancel()
                seconds = time.perf_counter() - started
                cpu = meter.stop()
                own1 = resource.getrusage(resource.RUSAGE_SELF)
                server_cpu = (process_cpu_s(pid) - cpu0) / seconds
                rss = _peak_rss_bytes(pid)
    loadgen = (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) / seconds
    return make_result(
        f"http-batch-{batch_size}", backend, scenario, ops, seconds, latencies, senders=senders,
        errors=failures, loadgen_cpu=loadgen, service_cpu=server_cpu, db_cpu=cpu.get("server_cpu", 0.0),
        peak_rss_mb=rss / 2**20, machine_cpu=cpu.get("machine_cpu"),
    )  # fmt: skip


async def durability_settings(backend: str) -> dict[str, Any]:
    """The run's durability, read back rather than assumed (reported with the figures):
    SQLite's from a connection opened the way the service opens its shard files, MariaDB's
    from the server the run used."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            conn = connect_shard_file(Path(tmp) / "probe.db")
            try:
                journal_mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
                synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])
            finally:
                conn.close()
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return {"journal_mode": journal_mode, "synchronous": f"{names.get(synchronous, '?')} ({synchronous})"}
    return await mariadb_variables(("innodb_flush_log_at_trx_commit", "log_bin", "sync_binlog"))


async def mariadb_variables(names: tuple[str, ...]) -> dict[str, Any]:
    conn = await mysql_connect(parse_mysql_url(mysql_url()))
    try:
        async with conn.cursor() as cur:
            values = {}
            for name in names:
                await cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
                row = await cur.fetchone()
                values[name] = str(row[1]) if row else None
            return values
    finally:
        conn.close()
