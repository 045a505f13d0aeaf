"""Tail latency with holds that stay pending, under an open-loop load (issue 18).

Scenarios:
- ``pending-hot``: holds on one account, never captured (they pile up, as a gateway's do).
- ``pending-10k``: the same on 10,000 accounts picked at random.
- ``gateway``: each payment holds on one of 10,000 payers for one of 5 merchants (hot
  destinations); after a random 0.05-5 s it is captured (70%), released (20%), or left to
  expire (10%, placed with a 2 s expiry, so the sweep ends it).

For each scenario and mode (single operations, batches) the maximum rate is measured first
with a closed loop (64 connections, or 4 batch senders), then the load runs open-loop at
fractions of it; each row reports p50/p95/p99/p99.9/max from the scheduled send times.
With ``before_python`` (another checkout's venv) every row runs on that code too, right
before ours, at the same rates: the maximum is taken from the code before the change.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from balance.bench import ours
from balance.bench.disk_probe import DiskSyncProbe
from balance.bench.openloop import Done, OpenLoop, Schedule, run_at_rate, run_closed
from balance.bench.results import BenchResult, percentile

SCENARIOS = ("pending-hot", "pending-10k", "gateway")
PAYERS, MERCHANTS = 10_000, 5
FUNDS = 10**12
SETTLE_DELAY_S = (0.05, 5.0)
SHORT_EXPIRY_S, LONG_EXPIRY_S = 2, 120
SINGLE_CONNECTIONS, OPEN_CONNECTIONS, BATCH_SENDERS = 64, 256, 4
SETTLE_S = 2.0  # between rows
SLOW_COMMIT_S = 0.05  # a commit that took longer is counted (must be a bucket of balance_commit_seconds)

_json = msgspec.json.Encoder()


class _Result(msgspec.Struct):
    status: int


class _BatchAnswer(msgspec.Struct):
    results: list[_Result]


_batch_answer = msgspec.json.Decoder(_BatchAnswer)


def _post(host: bytes, path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), host, ours.ADMIN_KEY.encode(), len(body), body)
    )


class Workload:
    """The scenario's requests: ``hold(n)`` for a new payment; in ``gateway`` its settlement is
    put on ``settles`` (due time, op) once the hold is answered."""

    def __init__(self, scenario: str, payers: list[str], merchants: list[str], host: bytes, seed: int) -> None:
        self.scenario, self.payers, self.merchants, self.host = scenario, payers, merchants, host
        self.random = random.Random(seed)
        self.tag = uuid.uuid4().hex[:8]
        self.settles: list[tuple[float, int, dict[str, Any]]] = []  # a heap
        self._count = 0
        self.placed = self.expiring = 0

    def hold_op(self, n: int) -> dict[str, Any]:
        rnd = self.random
        account = self.payers[0] if self.scenario == "pending-hot" else rnd.choice(self.payers)
        op: dict[str, Any] = {"account_id": account, "id": f"{self.tag}-{n}", "amount": 1}
        if self.scenario == "gateway":
            op["destination_account_id"] = rnd.choice(self.merchants)
            roll = rnd.random()
            op["expires_in_s"] = SHORT_EXPIRY_S if roll >= 0.9 else LONG_EXPIRY_S
            op["_settle"] = "capture" if roll < 0.7 else "release" if roll < 0.9 else None
        return op

    def after_hold(self, op: dict[str, Any], status: int, answered: float) -> None:
        """A hold was answered: its capture or release comes due after a random delay."""
        self.placed += status == 201
        verb = op.get("_settle")
        if status != 201 or self.scenario != "gateway":
            return
        if verb is None:
            self.expiring += 1
            return
        self._count += 1
        due = answered + self.random.uniform(*SETTLE_DELAY_S)
        import heapq

        heapq.heappush(
            self.settles, (due, self._count, {"op": verb, "account_id": op["account_id"], "hold_id": op["id"]})
        )

    # ---- single operations ------------------------------------------------------------

    def single_hold(self, n: int, _at: float) -> tuple[bytes, Done | None]:
        op = self.hold_op(n)
        body = {k: v for k, v in op.items() if k not in ("account_id", "_settle")}
        request = _post(self.host, f"/v1/accounts/{op['account_id']}/holds", _json.encode(body))
        return request, lambda status, _body, at: self.after_hold(op, status, at)

    def single_settle(self, op: dict[str, Any]) -> bytes:
        return _post(self.host, f"/v1/accounts/{op['account_id']}/holds/{op['hold_id']}/{op['op']}", b"{}")

    # ---- batches ------------------------------------------------------------------------

    def batch_holds(self, n: int, size: int) -> tuple[bytes, Done]:
        ops = [self.hold_op(n * size + i) for i in range(size)]
        wire = [{"op": "hold", **{k: v for k, v in op.items() if k != "_settle"}} for op in ops]
        body = _json.encode({"operations": wire})

        def done(status: int, answer: bytes, at: float) -> None:
            if status != 200:
                return
            for op, result in zip(ops, _batch_answer.decode(answer).results, strict=False):
                self.after_hold(op, result.status, at)

        return _post(self.host, "/v1/batch", body), done

    def batch_settles(self, ops: list[dict[str, Any]]) -> bytes:
        return _post(self.host, "/v1/batch", _json.encode({"operations": ops}))


async def _setup(url: str, scenario: str) -> tuple[list[str], list[str]]:
    """Payers (funded) and merchants, created through the API."""
    payers_n = 1 if scenario == "pending-hot" else PAYERS
    merchants_n = MERCHANTS if scenario == "gateway" else 0
    ids: list[str] = []
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ours.ADMIN_KEY}"}, timeout=120
    ) as client:
        sem = asyncio.Semaphore(32)

        async def create() -> str:
            async with sem:
                response = await client.post(
                    "/v1/accounts", json={"kind": "partner", "region": "US", "currency": "USD"}
                )
                response.raise_for_status()
                return str(response.json()["id"])

        ids = list(await asyncio.gather(*(create() for _ in range(payers_n + merchants_n))))
        payers, merchants = ids[:payers_n], ids[payers_n:]
        for start in range(0, len(payers), 8000):
            ops = [
                {"op": "credit", "account_id": a, "id": "fund", "amount": FUNDS} for a in payers[start : start + 8000]
            ]
            response = await client.post("/v1/batch", json={"operations": ops})
            response.raise_for_status()
    return payers, merchants


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", int(parts.port or 80)


async def _drive(
    url: str, scenario: str, mode: str, batch_size: int, rate: float | None, duration_s: float,
    payers: list[str], merchants: list[str],
) -> tuple[OpenLoop, float, Workload]:  # fmt: skip
    """One load: closed-loop (``rate`` None: the maximum) or open-loop at ``rate`` ops/s."""
    host, port = _host_port(url)
    work = Workload(scenario, payers, merchants, f"{host}:{port}".encode(), hash((scenario, mode, rate)) & 0xFFFF)
    single = mode == "single"
    connections = (SINGLE_CONNECTIONS if single else BATCH_SENDERS) if rate is None else OPEN_CONNECTIONS
    gen = OpenLoop(host, port, connections)
    await gen.open()
    import heapq

    if rate is None:  # closed loop: a due settlement first, else a new payment

        def make(n: int, now: float) -> tuple[bytes, Done | None]:
            if single:
                if work.settles and work.settles[0][0] <= now:
                    return work.single_settle(heapq.heappop(work.settles)[2]), None
                return work.single_hold(n, now)
            due: list[dict[str, Any]] = []
            while work.settles and work.settles[0][0] <= now and len(due) < batch_size:
                due.append(heapq.heappop(work.settles)[2])
            if due:
                return work.batch_settles(due), None
            return work.batch_holds(n, batch_size)

        started = time.perf_counter()
        await run_closed(gen, duration_s, make)
        return gen, time.perf_counter() - started, work

    schedule = Schedule()
    # gateway: ~0.9 settlements per hold, so holds go at rate / 1.9 and the total is ``rate``
    hold_rate = rate / 1.9 if scenario == "gateway" else rate
    if single:

        def make_open(n: int, at: float) -> tuple[bytes, Done | None]:
            while work.settles and work.settles[0][0] <= at:  # settlements due: on their own time
                due, _, op = heapq.heappop(work.settles)
                schedule.add(due, work.single_settle(op))
            return work.single_hold(n, at)

        seconds = await run_at_rate(gen, hold_rate, duration_s, make_open, schedule)
    else:
        last_flush = [time.perf_counter()]

        def make_batch(n: int, at: float) -> tuple[bytes, Done | None]:
            due: list[dict[str, Any]] = []
            while work.settles and work.settles[0][0] <= at:
                due.append(heapq.heappop(work.settles)[2])
            for start in range(0, len(due), batch_size):
                schedule.add(at, work.batch_settles(due[start : start + batch_size]))
            last_flush[0] = at
            return work.batch_holds(n, batch_size)

        seconds = await run_at_rate(gen, hold_rate / batch_size, duration_s, make_batch, schedule)
    gen.recording = True
    return gen, seconds, work


def _row(
    label: str, backend: str, scenario: str, mode: str, code: str, gen: OpenLoop, seconds: float, ops: int,
    rate: float | None, unanswered: int, work: Workload,
) -> BenchResult:  # fmt: skip
    ordered = sorted(gen.samples.latency)
    p = [percentile(ordered, q) * 1000 for q in (50, 95, 99, 99.9)] if ordered else [math.nan] * 4
    return BenchResult(
        name=f"open-{mode}", backend=backend, scenario=label, ops=ops, seconds=seconds, ops_per_s=ops / seconds,
        p50_ms=p[0], p95_ms=p[1], p99_ms=p[2],
        extra={
            "p999_ms": p[3], "max_ms": (ordered[-1] * 1000) if ordered else math.nan, "code": code,
            "target_rate": rate, "requests": len(ordered), "errors": gen.samples.errors,
            "unanswered": unanswered, "tail_scenario": scenario, "holds_placed": work.placed,
            "left_to_expire": work.expiring, "samples": (gen.samples.at, gen.samples.latency),
        },
    )  # fmt: skip


@contextmanager
def _server(backend_env: dict[str, str], work_dir: Path, python: str | None) -> Any:
    with ours.server_process(backend_env, work_dir / "tail-server.log", python=python) as (url, pid):
        yield url, pid


class _ServerFigures(msgspec.Struct):
    """The server's own account of a load: its CPU and its commits (``/metrics``)."""

    cpu_s: float
    commits: float
    commit_s: float
    quick_commits: float  # those that took at most SLOW_COMMIT_S
    busy_s: float | None = None  # time with a commit in flight (None: a server without the metric)
    at: float = 0.0  # when read (time.perf_counter)

    @classmethod
    def read(cls, url: str, pid: int) -> _ServerFigures:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        return cls.from_text(text, ours.process_cpu_s(pid), time.perf_counter())

    @classmethod
    def from_text(cls, text: str, cpu_s: float, at: float) -> _ServerFigures:
        """The figures in a ``/metrics`` page (Prometheus text, read by prometheus_client's parser),
        summed over the shards."""
        summed: dict[str, float] = {}
        quick = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "balance_commit_seconds_bucket":
                    if float(sample.labels["le"]) == SLOW_COMMIT_S:
                        quick += sample.value
                else:
                    summed[sample.name] = summed.get(sample.name, 0.0) + sample.value
        return cls(
            cpu_s, summed.get("balance_commit_seconds_count", 0.0), summed.get("balance_commit_seconds_sum", 0.0),
            quick, summed.get("balance_commit_busy_seconds_total"), at,
        )  # fmt: skip

    def since(self, start: _ServerFigures, ops: int) -> dict[str, float]:
        """Service CPU per operation and the commits' count and mean over the load: steadier
        than a percentile when two codes' writers are compared (a commit's cost shows in both);
        and the share of the time between the two readings (the load and its drain) with a
        commit in flight (the writer's duty cycle)."""
        commits = self.commits - start.commits
        elapsed = self.at - start.at
        busy: dict[str, float] = {}
        if self.busy_s is not None and start.busy_s is not None and elapsed > 0:
            busy["commit_busy"] = (self.busy_s - start.busy_s) / elapsed
        return busy | {
            "cpu_us_per_op": (self.cpu_s - start.cpu_s) * 1e6 / max(1, ops),
            "commits": commits,
            "commit_ms": (self.commit_s - start.commit_s) * 1000 / max(1.0, commits),
            "slow_commits": commits - (self.quick_commits - start.quick_commits),
        }


async def _one(
    backend: str, scenario: str, mode: str, batch_size: int, rate: float | None, duration_s: float, work_dir: Path,
    python: str | None, code: str, label: str,
) -> BenchResult:  # fmt: skip
    """A fresh database and server process; setup; the load; the row."""
    async with ours.scratch_storage(backend, work_dir) as (_, env):
        with _server(env, work_dir, python) as (url, pid):
            payers, merchants = await _setup(url, scenario)
            start = await asyncio.to_thread(_ServerFigures.read, url, pid)
            probe = DiskSyncProbe(work_dir)
            probe.start()
            try:
                gen, seconds, work = await _drive(url, scenario, mode, batch_size, rate, duration_s, payers, merchants)
                unanswered = await gen.drain(30)
            finally:
                probe.stop()
            end = await asyncio.to_thread(_ServerFigures.read, url, pid)
            gen.close()
    answered = len(gen.samples.latency)
    ops = answered * (1 if mode == "single" else batch_size)  # batches: ops (settle batches may be smaller)
    row = _row(label, backend, scenario, mode, code, gen, seconds, ops, rate, unanswered, work)
    row.extra.update(end.since(start, ops))
    row.extra.update(probe.figures(since=gen.started))
    return row


async def run_tail(
    backend: str, scenario: str, mode: str, *, batch_size: int, fractions: list[float], duration_s: float,
    work_dir: Path, before_python: str | None, max_rate: float | None = None,
    report: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:  # fmt: skip
    """The maximum (closed loop, on the code before the change when given), then each fraction
    of it open-loop, before and after side by side."""
    rows: list[BenchResult] = []
    codes = [("before", before_python), ("after", None)] if before_python else [("this", None)]
    mode_label = "single" if mode == "single" else f"batch{batch_size}"
    if max_rate is None:
        python, code = codes[0][1], codes[0][0]
        peak = await _one(backend, scenario, mode, batch_size, None, duration_s, work_dir, python, code,
                          f"{scenario} {mode_label} max (closed)")  # fmt: skip
        rows.append(peak)
        if report:
            report(peak)
        max_rate = peak.ops_per_s
    for i, fraction in enumerate(fractions):
        # The second of a pair inherits the first's background work (MariaDB flushing and purging
        # what the first wrote): the order alternates from one rate to the next, with a pause.
        for code, python in codes if i % 2 == 0 else codes[::-1]:
            await asyncio.sleep(SETTLE_S)
            row = await _one(backend, scenario, mode, batch_size, max_rate * fraction, duration_s, work_dir, python,
                             code, f"{scenario} {mode_label} {fraction:.0%}")  # fmt: skip
            row.extra["fraction"], row.extra["max_rate"] = fraction, max_rate
            rows.append(row)
            if report:
                report(row)
    return rows


def chart(result: BenchResult, directory: Path) -> Path | None:
    """Latency over time (scheduled send time, log scale): a stall is a vertical stripe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at, latency = result.extra.get("samples", ([], []))
    if not at:
        return None
    x = result.extra
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{result.backend}-{result.scenario}-{x.get('code', '')}".replace(" ", "-").replace("%", "pct")
    path = directory / f"{name.replace('(', '').replace(')', '')}.png"
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ax.scatter(at, [v * 1000 for v in latency], s=1, alpha=0.4, linewidths=0)
    ax.set_yscale("log")
    ax.set_xlabel("scheduled send time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(
        f"{result.backend} {result.scenario} [{x.get('code', '')}] {result.ops_per_s:,.0f} ops/s: p50 {result.p50_ms:.1f}"
        f"  p99 {result.p99_ms:.1f}  p99.9 {x['p999_ms']:.1f}  max {x['max_ms']:.0f} ms",
        fontsize=9,
    )
    for target in (10, 50, 100):
        ax.axhline(target, color="grey", linewidth=0.5, linestyle="--")
    slow_syncs = x.get("disk_slow_syncs") or []
    if slow_syncs:  # the disk's own slow syncs (``DiskSyncProbe``), drawn where they began
        ax.scatter([at for at, _ in slow_syncs], [ms for _, ms in slow_syncs], s=12, marker="x", color="red",
                   linewidths=0.8, label="a sync of the disk probe")  # fmt: skip
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
