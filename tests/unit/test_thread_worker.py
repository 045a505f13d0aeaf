"""The SQLite storage's threads (``storage.thread_worker``): what the thread pool they replace
promised the commit path, kept: order, cancellation before the start, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from balance.storage.thread_worker import ThreadWorker


async def test_calls_run_on_the_worker_s_thread_one_at_a_time_in_the_order_given() -> None:
    worker = ThreadWorker("test-w")
    seen: list[tuple[int, str]] = []
    running = 0
    overlap = False

    def call(n: int) -> int:
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        seen.append((n, threading.current_thread().name))
        running -= 1
        return n * n

    results = await asyncio.gather(*(worker.run(lambda n=n: call(n)) for n in range(200)))
    worker.shutdown()
    assert results == [n * n for n in range(200)]
    assert [n for n, _ in seen] == list(range(200)) and {name for _, name in seen} == {"test-w"}
    assert not overlap


async def test_an_exception_reaches_the_waiter_and_the_worker_goes_on() -> None:
    worker = ThreadWorker("test-w")

    def fail() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await worker.run(fail)
    assert await worker.run(lambda: 7) == 7
    worker.shutdown()


async def test_a_call_cancelled_before_the_thread_takes_it_up_never_runs() -> None:
    worker = ThreadWorker("test-w")
    gate = threading.Event()
    ran: list[str] = []
    blocker = worker.run(lambda: gate.wait(5))  # the thread is busy with this one
    queued = worker.run(lambda: ran.append("cancelled one"))
    after = worker.run(lambda: ran.append("the next"))
    queued.cancel()
    gate.set()
    assert await blocker is True
    await after
    worker.shutdown()
    assert ran == ["the next"]


async def test_after_shutdown_a_call_is_refused_at_once_and_those_given_before_it_ran() -> None:
    worker = ThreadWorker("test-w")
    ran: list[int] = []
    futures = [worker.run(lambda n=n: ran.append(n)) for n in range(50)]
    worker.shutdown(wait=True)
    assert ran == list(range(50))
    await asyncio.gather(*futures)
    with pytest.raises(RuntimeError, match="shut down"):
        worker.run(lambda: None)
    worker.shutdown()  # (twice is harmless)


async def test_a_waiter_that_gave_up_does_not_break_the_answer_of_the_call_it_left() -> None:
    worker = ThreadWorker("test-w")
    gate = threading.Event()
    started = threading.Event()

    def slow() -> int:
        started.set()
        gate.wait(5)
        return 1

    running = worker.run(slow)
    await asyncio.to_thread(started.wait, 5)
    running.cancel()  # the thread runs it anyway (it had begun); its answer is dropped
    gate.set()
    assert await worker.run(lambda: 2) == 2
    worker.shutdown()
    assert running.cancelled()
