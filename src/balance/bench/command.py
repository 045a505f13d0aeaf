"""`balance-service bench`: the naive design, the storage ceiling and our service, in ONE run.

Same machine, same databases, same row shapes, side by side; ratios are computed inside the
run (ours / naive, ours / ceiling), never across runs. ``--quick`` finishes in under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from balance.bench import ours, recovery
from balance.bench.ceiling import run_ceiling
from balance.bench.mariadb_server import PrivateMariaDb, installed
from balance.bench.naive import mysql_reachable, run_naive
from balance.bench.results import BenchResult

console = Console(width=180)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    scenarios = ["hot", "uniform", "mix"] if args.scenario == "all" else [args.scenario]
    return {
        "duration_s": 2.0 if quick else 5.0,
        "scenarios": [s for s in scenarios if s != "recovery"] if not quick else [s for s in scenarios if s == "hot"],
        "batch_sizes": [1000] if quick else [100, 1000, 8190],
        "recovery": args.scenario in ("all", "recovery") and not (quick and args.scenario == "all"),
        "recovery_size": 100_000 if quick else 1_000_000,
        "clients": args.clients,
    }


class _Run(Protocol):
    """A measurement: called with the progress callback (keyword ``progress``)."""

    def __call__(self, *, progress: Callable[[int], None]) -> Awaitable[BenchResult]: ...


async def _measure(progress: Progress, label: str, total: float, unit_total: bool, run: _Run) -> BenchResult:
    task = progress.add_task(label, total=total)

    def update(value: int) -> None:
        progress.update(task, completed=value if unit_total else min(value, total))

    result = await run(progress=update)
    progress.update(task, completed=total, description=f"{label}: {result.ops_per_s:,.0f}/s")
    return result


async def _backends(args: argparse.Namespace) -> list[str]:
    """The backends a run measures: MariaDB only when it answers."""
    backends = ["sqlite", "mariadb"] if args.backend == "both" else [args.backend]
    if "mariadb" in backends and not await mysql_reachable():
        console.print("[yellow]MariaDB is not reachable: measuring SQLite only[/yellow]")
        backends.remove("mariadb")
    return backends


async def run_all(args: argparse.Namespace) -> list[BenchResult]:
    settings = plan(args)
    duration = settings["duration_s"]
    backends = await _backends(args)
    work_dir = Path(tempfile.mkdtemp(prefix="balance-bench-"))
    results: list[BenchResult] = []
    ms = int(duration * 1000)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=False
    ) as progress:
        for backend in backends:
            if settings["scenarios"]:
                results.append(await _measure(progress, f"{backend} naive hot x16", 10**9, True, functools.partial(run_naive,
                    backend, scenario="hot", clients=16, duration_s=duration)))  # fmt: skip
                results.append(await _measure(progress, f"{backend} naive uniform x16", 10**9, True, functools.partial(run_naive,
                    backend, scenario="uniform", clients=16, duration_s=duration)))  # fmt: skip
                writers = [1] if backend == "sqlite" else [1, 2, 4]
                for w in writers:
                    results.append(await _measure(progress, f"{backend} ceiling x{w} writers", 10**9, True, functools.partial(run_ceiling,
                        backend, writers=w, rows_per_txn=1000, duration_s=duration)))  # fmt: skip
            for scenario in settings["scenarios"]:
                results.append(await _measure(progress, f"{backend} engine {scenario}", 10**9, True, functools.partial(ours.run_engine,
                    backend, scenario, clients=settings["clients"], duration_s=duration, work_dir=work_dir)))  # fmt: skip
                results.append(await _measure(progress, f"{backend} http single {scenario} x{settings['clients']}", ms, False, functools.partial(ours.run_http_single,
                    backend, scenario, clients=settings["clients"], duration_s=duration, work_dir=work_dir)))  # fmt: skip
                if scenario == "hot" and not args.quick:  # latency at a lighter load: a quarter of the clients
                    light = max(1, settings["clients"] // 4)
                    result = await _measure(progress, f"{backend} http single {scenario} x{light}", ms, False, functools.partial(ours.run_http_single,
                        backend, scenario, clients=light, duration_s=duration, work_dir=work_dir))  # fmt: skip
                    result.name = f"http-single-x{light}"
                    results.append(result)
                for size in settings["batch_sizes"]:
                    results.append(await _measure(progress, f"{backend} http batch {size} {scenario}", 10**9, True, functools.partial(ours.run_http_batch,
                        backend, scenario, batch_size=size, senders=4, duration_s=duration, work_dir=work_dir)))  # fmt: skip
            if settings["recovery"]:
                n = settings["recovery_size"]
                results.append(await _measure(progress, f"{backend} recovery {n:,}+{n:,}", 2 * n, False, functools.partial(recovery.run_recovery,
                    backend, accounts=n, holds=n, work_dir=work_dir)))  # fmt: skip
    for backend in backends:
        try:
            durability = await ours.durability_settings(backend)
        except Exception as exc:  # noqa: BLE001 (the figures measured so far are kept)
            durability = {"error": f"could not read the durability settings: {exc!r}"}
        for result in results:
            if result.backend == backend:
                result.extra.setdefault("durability", durability)
    _add_ratios(results)
    return results


def _add_ratios(results: list[BenchResult]) -> None:
    """ours / naive (hot, same backend) and ours / ceiling (best writer count, same backend)."""
    for result in results:
        if result.name in ("naive", "recovery") or result.name.startswith("ceiling"):
            continue
        naive = next(
            (r for r in results if r.name == "naive" and r.backend == result.backend and r.scenario == "hot"), None
        )
        ceilings = [r.ops_per_s for r in results if r.name.startswith("ceiling") and r.backend == result.backend]
        if naive is not None and naive.ops_per_s:
            result.extra["x_naive"] = result.ops_per_s / naive.ops_per_s
        if ceilings:
            result.extra["of_ceiling"] = result.ops_per_s / max(ceilings)


def render(results: list[BenchResult]) -> Table:
    table = Table(title="balance-service bench (durable commits; medians where repeated)")
    for column in ("backend", "what", "scenario", "ops/s", "p50 ms", "p95 ms", "p99 ms", "x naive", "of ceiling",
                   "peak RSS MB", "loadgen CPU", "machine CPU", "notes"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("backend", "what", "scenario", "notes") else "left")
    for r in results:
        x = r.extra
        notes = ""
        if r.name == "recovery":
            notes = (
                f"ready {x['ready_s']:.1f}s, {x['bytes_per_account']:.0f} B/account, {x['bytes_per_hold']:.0f} B/hold"
            )
        elif "writers" in x:
            notes = f"{x['writers']} writer(s), {x.get('rows_per_txn', '')} rows/txn"
        elif "clients" in x and r.name == "naive":
            notes = f"{x['clients']} connections"
        table.add_row(
            r.backend, r.name, r.scenario, f"{r.ops_per_s:,.0f}",
            *(f"{v:.2f}" if v else "" for v in (r.p50_ms, r.p95_ms, r.p99_ms)),
            f"{x['x_naive']:.1f}x" if "x_naive" in x else "", f"{x['of_ceiling']:.0%}" if "of_ceiling" in x else "",
            f"{x['peak_rss_mb']:.0f}" if "peak_rss_mb" in x else "",
            f"{x['loadgen_cpu']:.0%}" if "loadgen_cpu" in x else "",
            f"{x['machine_cpu']:.2f}/{_cpus()}" if x.get("machine_cpu") is not None else "", notes,
        )  # fmt: skip
    return table


TAIL_SCENARIOS = {"pending": ["pending-hot", "pending-10k"], "gateway": ["gateway"]}
TAIL_SCENARIOS["tail"] = TAIL_SCENARIOS["pending"] + TAIL_SCENARIOS["gateway"]
TAIL_SCENARIOS.update({name: [name] for name in TAIL_SCENARIOS["tail"]})  # each one alone too


async def run_tail_all(args: argparse.Namespace) -> list[BenchResult]:
    """Issue 18's rows: open-loop tail latency (pending, gateway), holds at scale, expiry bursts."""
    from balance.bench import tail

    backends = await _backends(args)
    work_dir = Path(tempfile.mkdtemp(prefix="balance-bench-"))
    results: list[BenchResult] = []
    if args.scenario == "million":
        for backend in backends:
            results.append(
                await recovery.run_recovery(backend, accounts=args.accounts, holds=args.holds, work_dir=work_dir)
            )
            console.print(render_tail(results[-1:]))
        return results
    if args.scenario == "expiry":
        from balance.bench import expiry

        for backend in backends:
            results.append(await expiry.run_expiry_burst(backend, holds=args.holds, work_dir=work_dir))
            console.print(render_tail(results[-1:]))
        return results
    duration = args.duration or (3.0 if args.quick else 10.0)
    fractions = [float(f) for f in args.rates.split(",")]
    chart_dir = Path(args.chart) if args.chart else None

    def report(row: BenchResult) -> None:
        console.print(render_tail([row]))
        if chart_dir is not None:
            tail.chart(row, chart_dir)

    for backend in backends:
        for scenario in TAIL_SCENARIOS[args.scenario]:
            for mode in args.modes.split(","):
                size = 0 if mode == "single" else int(mode.removeprefix("batch"))
                results += await tail.run_tail(
                    backend, scenario, "single" if mode == "single" else "batch", batch_size=size,
                    fractions=fractions, duration_s=duration, work_dir=work_dir,
                    before_python=args.before_python, max_rate=args.max_rate, report=report,
                )  # fmt: skip
    return results


def render_tail(results: list[BenchResult]) -> Table:
    table = Table(title="tail latency, open loop (latency from the scheduled send time)")
    for column in ("backend", "row", "code", "target/s", "ops/s", "p50", "p95", "p99", "p99.9", "max ms",
                   "errors", "unanswered", "notes"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("backend", "row", "code", "notes") else "right")
    for r in results:
        x = r.extra
        if r.name == "recovery":
            table.add_row(r.backend, f"million {r.scenario}", "", "", "", "", "", "", "", "", "", "",
                          f"ready {x['ready_s']:.1f}s, {x['bytes_per_hold']:.0f} B/hold, "
                          f"{x['bytes_per_account']:.0f} B/account, RSS {x['rss_ready_mb']:.0f} MB")  # fmt: skip
            continue
        if r.name == "expiry-burst":
            table.add_row(r.backend, r.scenario, "", "", f"{r.ops_per_s:,.0f}", "", "", "", "", "", "", "",
                          x.get("notes", ""))  # fmt: skip
            continue
        target = x.get("target_rate")
        table.add_row(
            r.backend, r.scenario, x.get("code", ""), f"{target:,.0f}" if target else "closed",
            f"{r.ops_per_s:,.0f}", *(f"{v:.1f}" for v in (r.p50_ms, r.p95_ms, r.p99_ms, x["p999_ms"], x["max_ms"])),
            str(x["errors"]), str(x["unanswered"]),
            f"{x['holds_placed']:,} holds placed" + (f", {x['left_to_expire']:,} left to expire" if x["left_to_expire"] else "")
            + (f"; {x['cpu_us_per_op']:.0f} us CPU/op, {x['commits'] / r.seconds:,.0f} commits/s of"
               f" {x['commit_ms']:.2f} ms" if "commit_ms" in x else "")
            + (f", {x['slow_commits']:.0f} over 50 ms" if x.get("slow_commits") else "")
            + (f", in flight {x['commit_busy']:.0%} of the time" if "commit_busy" in x else "")
            + (f"; disk sync p99 {x['disk_sync_p99_ms']:.1f}, max {x['disk_sync_max_ms']:.0f} ms"
               if "disk_sync_p99_ms" in x else ""),
        )  # fmt: skip
    return table


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load_before = _load()
    tail_run = args.scenario in (*TAIL_SCENARIOS, "million", "expiry")
    on_mariadb = args.backend != "sqlite"
    with mariadb_server(args.private_mariadb, wanted=on_mariadb):
        results = asyncio.run(run_tail_all(args) if tail_run else run_all(args))
        server = asyncio.run(_server_settings()) if on_mariadb else None
    if server is not None:
        console.print(f"MariaDB: {server}")
    console.print(render_tail(results) if tail_run else render(results))
    console.print(f"finished in {time.perf_counter() - started:.0f} s; load average {load_before} -> {_load()}")
    if args.json_path:
        document = {
            "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
            "args": {"quick": args.quick, "backend": args.backend, "scenario": args.scenario, "clients": args.clients},
            "load": f"load average at start {load_before}, at end {_load()}",  # the machine may be shared
            "results": [_without_samples(r.to_dict()) for r in results],
        }
        if server is not None:
            document["mariadb"] = server
        Path(args.json_path).write_text(json.dumps(document, indent=2, default=str))
        console.print(f"figures written to {args.json_path}")
    return 0


@contextmanager
def mariadb_server(config: str | None, wanted: bool) -> Iterator[None]:
    """``--private-mariadb CNF``: the run's MariaDB rows on a private mariadbd started with the
    settings in CNF (``deploy/mariadb/balance.cnf``), stopped and removed afterwards, instead
    of the server ``BALANCE_TEST_MYSQL_URL`` names (which keeps its own settings)."""
    if config is None or not wanted:
        yield
        return
    if not installed():
        raise SystemExit(
            "--private-mariadb: mariadbd / mariadb-install-db not installed (apt-get install mariadb-server)"
        )
    base = Path(tempfile.mkdtemp(prefix="balance-bmdb-"))
    server = PrivateMariaDb(base, Path(config).resolve())
    saved = os.environ.get("BALANCE_TEST_MYSQL_URL")
    try:
        console.print(f"starting a private mariadbd with {config} (port {server.port}, data in {base})")
        server.install()
        server.start(timeout_s=300)
        os.environ["BALANCE_TEST_MYSQL_URL"] = server.url("balance_bench")
        yield
    finally:
        if saved is None:
            os.environ.pop("BALANCE_TEST_MYSQL_URL", None)
        else:
            os.environ["BALANCE_TEST_MYSQL_URL"] = saved
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# What the rows' MariaDB ran with: durability, and the sizes that decide whether a long run
# stalls on the redo log or the buffer pool (docs/mariadb.md).
SERVER_SETTINGS = (
    "version", "innodb_flush_log_at_trx_commit", "log_bin", "sync_binlog", "innodb_log_file_size",
    "innodb_buffer_pool_size", "innodb_io_capacity", "innodb_flush_neighbors",
)  # fmt: skip


async def _server_settings() -> dict[str, Any] | None:
    if not await mysql_reachable():
        return None
    return await ours.mariadb_variables(SERVER_SETTINGS)


def _load() -> str:
    """The machine's 1/5/15-minute load averages, as ``uptime`` shows them."""
    import os

    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _without_samples(row: dict[str, Any]) -> dict[str, Any]:
    """The per-request samples of a tail row go to its chart, not to the JSON."""
    row["extra"] = {k: v for k, v in row["extra"].items() if k != "samples"}
    return row
