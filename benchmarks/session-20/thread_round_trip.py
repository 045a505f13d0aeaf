"""CPU per round trip of a call that does nothing: a one-thread pool through run_in_executor
(what SQLite's storage used before session 20) against storage.thread_worker.ThreadWorker.

    .venv/bin/python benchmarks/session-20/thread_round_trip.py
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import uvloop

from balance.storage.thread_worker import ThreadWorker


def nothing() -> int:
    return 1


async def main() -> None:
    loop = asyncio.get_running_loop()
    pool, worker = ThreadPoolExecutor(1), ThreadWorker("bench")
    ways = {"pool": lambda: loop.run_in_executor(pool, nothing), "worker": lambda: worker.run(nothing)}
    for _ in range(3):
        for name, call in ways.items():
            n = 20_000
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                await call()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name:6s} {wall / n * 1e6:5.1f} us wall, {cpu / n * 1e6:5.1f} us CPU per round trip")
    pool.shutdown()
    worker.shutdown()


uvloop.run(main())
