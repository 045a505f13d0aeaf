"""One bench row, measured side by side for settings given as environment variables.

    .venv/bin/python tools/side_by_side.py sqlite single64 hot BALANCE_GIL_SWITCH_MS=5,0.5 [rounds]

Modes: ``engine`` (in process, 64 callers), ``singleN`` (wrk, N connections, a real server
process), ``batchN`` (the batch endpoint, N operations per request, 4 senders). Each round
runs every value of the variable once, one after another (8 s each), so the machine's
drift falls on all of them alike; the end prints each value's median and its ratio to the
first value's. The server process is started afresh for every run and inherits the
variable, so any ``BALANCE_*`` setting (or a variable a change under test reads) can be
compared this way. The setting ``scenario=hot,pending-hot`` instead alternates scenarios
(the third argument is then ignored): the same load generator on the same code. This is how the session 8 decisions in BENCHMARKS.md were measured.
Each line also gives the service's CPU per operation (and the database server's, MariaDB),
which the neighbours' load moves less than throughput; ``tools/instructions_per_op.py``
counts instructions, which it does not move at all.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from balance.bench import ours
from balance.bench.results import BenchResult


async def measure(backend: str, mode: str, scenario: str, work_dir: Path) -> BenchResult:
    if mode == "engine":
        return await ours.run_engine(backend, scenario, clients=64, duration_s=8, work_dir=work_dir)
    if mode.startswith("single"):
        clients = int(mode.removeprefix("single"))
        return await ours.run_http_single(backend, scenario, clients=clients, duration_s=8, work_dir=work_dir)
    if mode.startswith("batch"):
        size = int(mode.removeprefix("batch"))
        return await ours.run_http_batch(backend, scenario, batch_size=size, senders=4, duration_s=8, work_dir=work_dir)
    raise SystemExit(f"unknown mode {mode!r}: engine, singleN or batchN")


async def main(argv: list[str]) -> None:
    if len(argv) not in (4, 5) or "=" not in argv[3]:
        raise SystemExit(__doc__)
    backend, mode, scenario, setting = argv[:4]
    rounds = int(argv[4]) if len(argv) == 5 else 3
    name, _, values = setting.partition("=")
    results: dict[str, list[float]] = {value: [] for value in values.split(",")}
    cpu_per_op: dict[str, list[float]] = {value: [] for value in results}
    for round_number in range(rounds):
        for value in results:
            if name == "scenario":
                scenario = value
            else:
                os.environ[name] = value
            with tempfile.TemporaryDirectory() as work_dir:
                result = await measure(backend, mode, scenario, Path(work_dir))
            results[value].append(result.ops_per_s)
            cpu = result.extra.get("service_cpu")
            db_cpu = result.extra.get("db_cpu")
            if cpu is not None:
                cpu_per_op[value].append(cpu / result.ops_per_s * 1e6)
            print(
                f"round {round_number + 1}  {name}={value}: {result.ops_per_s:,.0f} ops/s"
                f"  p99 {result.p99_ms:.1f} ms"
                + ("" if cpu is None else f"  service CPU {cpu:.2f} ({cpu / result.ops_per_s * 1e6:.1f} us/op)")
                + (f"  DB CPU {db_cpu / result.ops_per_s * 1e6:.1f} us/op" if db_cpu else ""),
                flush=True,
            )
    first = statistics.median(next(iter(results.values())))
    for value, figures in results.items():
        median = statistics.median(figures)
        per_op = f", service CPU {statistics.median(cpu_per_op[value]):.1f} us/op" if cpu_per_op[value] else ""
        print(f"{name}={value}: median {median:,.0f} ops/s ({median / first:.2f}x){per_op}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
