"""Run the baselines on both backends and print a table: ``python -m balance.bench.baselines [--quick]``.

* naive: one transaction per hold, ``hot`` (one account) with N clients and with 1 client,
  and ``uniform`` (10,000 accounts) with N clients;
* ceiling: raw multi-row journal inserts, 1000 rows per transaction, 1/2/4 writers on
  MariaDB, 1 writer on SQLite.

``--methods`` also compares the ways of building/sending the MariaDB statement and SQLite's
two insert styles; ``--variants`` measures leaner journal rows (notes only: the schema is not
changed). Every run uses a fresh database (MariaDB) or temporary file (SQLite) and removes it.
MariaDB is skipped with a notice when it is unreachable. ``client_cpu``/``server_cpu`` are the
CPU of this process and of a local mariadbd during the run, in cores (1.0 = one core busy);
``other_cpu`` is the rest of the machine's busy CPU (a high value flags a noisy run) and
``iowait`` the machine's I/O wait, also in cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from balance.bench.ceiling import MYSQL_METHODS, SQLITE_METHODS, VARIANTS, run_ceiling
from balance.bench.naive import machine_cpu_seconds, mysql_reachable, mysql_url, run_naive
from balance.bench.results import BenchResult, format_table

TABLE_EXTRAS = ("clients", "writers", "method", "variant", "client_cpu", "server_cpu", "other_cpu", "iowait")


def _plan(args: argparse.Namespace, backends: list[str]) -> list[tuple[str, Callable[[], Awaitable[BenchResult]]]]:
    d = args.duration
    plan: list[tuple[str, Callable[[], Awaitable[BenchResult]]]] = []
    for backend in backends:
        where = args.mysql_url if backend == "mariadb" else args.sqlite_dir
        for scenario, clients in (("hot", args.clients), ("hot", 1), ("uniform", args.clients)):
            plan.append((
                f"naive {backend} {scenario} x{clients}",
                functools.partial(run_naive, backend, url_or_path=where, scenario=scenario, clients=clients, duration_s=d),
            ))  # fmt: skip
        for writers in (1, 2, 4) if backend == "mariadb" else (1,):
            plan.append((
                f"ceiling {backend} {writers}w",
                functools.partial(run_ceiling, backend, url_or_path=where, writers=writers, rows_per_txn=args.rows, duration_s=d),
            ))  # fmt: skip
        if args.methods:
            methods = MYSQL_METHODS if backend == "mariadb" else SQLITE_METHODS
            for writers in (1, 2) if backend == "mariadb" else (1,):
                for method in methods:
                    plan.append((
                        f"ceiling {backend} {writers}w method={method}",
                        functools.partial(
                            run_ceiling, backend, url_or_path=where, writers=writers, rows_per_txn=args.rows, duration_s=d, method=method
                        ),
                    ))  # fmt: skip
        if args.variants:
            for variant in VARIANTS[1:]:
                plan.append((
                    f"ceiling {backend} 1w variant={variant}",
                    functools.partial(
                        run_ceiling, backend, url_or_path=where, writers=1, rows_per_txn=args.rows, duration_s=d, variant=variant
                    ),
                ))  # fmt: skip
    return plan


async def _wait_quiet(threshold: float, max_wait_s: float) -> tuple[float, float]:
    """Wait until the rest of the machine uses less than ``threshold`` cores over one second,
    for at most ``max_wait_s``. Returns (seconds waited, the last busy reading in cores)."""
    waited, busy = 0.0, float("nan")
    while True:
        before, cpu0 = machine_cpu_seconds(), time.process_time()
        await asyncio.sleep(1.0)
        after, cpu1 = machine_cpu_seconds(), time.process_time()
        waited += 1.0
        if before is None or after is None:
            return waited, busy
        busy = max(0.0, after[0] - before[0] - (cpu1 - cpu0))
        if busy < threshold or waited >= max_wait_s:
            return waited, busy


async def _main(args: argparse.Namespace) -> int:
    backends = [b for b in ("mariadb", "sqlite") if args.backend in (b, "all")]
    if "mariadb" in backends and not await mysql_reachable(args.mysql_url):
        print(f"MariaDB unreachable at {args.mysql_url}: skipped", file=sys.stderr)
        backends.remove("mariadb")
    plan = _plan(args, backends)
    results: list[BenchResult] = []
    # SIGTERM cancels like Ctrl-C does: the running benchmark still drops its database / deletes its file.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        for i, (label, run) in enumerate(plan, 1):
            print(f"[{i}/{len(plan)}] {label} ...", file=sys.stderr, flush=True)
            if args.wait_quiet > 0:
                waited, busy = await _wait_quiet(args.quiet_cores, args.wait_quiet)
                print(f"    waited {waited:.0f} s for a quiet machine (others busy: {busy:.2f} cores)", file=sys.stderr)
            result = await run()
            results.append(result)
            print(
                f"    {result.ops_per_s:,.0f} ops/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms",
                file=sys.stderr,
                flush=True,
            )
            if i < len(plan) and args.wait_quiet <= 0:
                await asyncio.sleep(args.pause)  # let the server settle (purge, flushing, the dropped database)
    finally:  # also the results so far when interrupted
        if results:
            print(format_table(results, TABLE_EXTRAS), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m balance.bench.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s per run instead of 5 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (default 5, or 1 with --quick)")
    parser.add_argument("--backend", choices=("all", "mariadb", "sqlite"), default="all")
    parser.add_argument(
        "--mysql-url", default=mysql_url(), help="default $BALANCE_TEST_MYSQL_URL or root@127.0.0.1:3306"
    )
    parser.add_argument("--sqlite-dir", default=None, help="where the temporary SQLite files go (default: system temp)")
    parser.add_argument("--clients", type=int, default=16, help="naive design: concurrent connections")
    parser.add_argument("--rows", type=int, default=1000, help="ceiling: rows per transaction")
    parser.add_argument("--methods", action="store_true", help="also compare statement building/sending methods")
    parser.add_argument("--variants", action="store_true", help="also measure leaner journal rows (notes only)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S",
        help="before each run, wait up to S seconds until other processes use < --quiet-cores CPU",
    )  # fmt: skip
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="see --wait-quiet (default 0.3)")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (uvloop if installed)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 1.0 if args.quick else 5.0
    if not 0 < args.duration <= 3600 or args.clients < 1 or args.rows < 1 or not 0 <= args.wait_quiet <= 3600:
        parser.error("duration must be in (0, 3600], wait-quiet in [0, 3600], clients and rows positive")
    loop_factory = None
    if args.loop == "uvloop":
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted (the running benchmark cleaned up after itself)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
