"""One thread that runs a blocking driver's calls in order, answering into asyncio futures.

Why not ``loop.run_in_executor`` on a ``ThreadPoolExecutor(1)``: per call that builds a
``concurrent.futures.Future`` (with a ``Condition`` of its own), a work item, and asyncio's
chaining of the two futures, in interpreted Python on both threads; SQLite's writer makes
such a call for every commit, and at half the maximum rate a commit carries 3-6 operations.
Measured round trips of a call that does nothing (uvloop, compiled service, this machine):
~70-75 us of CPU through the pool, ~42-49 us here
(``benchmarks/session-20/thread_round_trip.py``). Here a call is one
``SimpleQueue.put`` and, when done, one ``call_soon_threadsafe``.

What the pool gave and this keeps: calls run one at a time in the order given; a call whose
future was cancelled before the thread took it up is not run; a call given after
``shutdown`` raises ``RuntimeError`` at once; ``shutdown`` lets the calls already given run
first.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class ThreadWorker:
    """A thread of its own, and the queue of calls it runs."""

    __slots__ = ("_calls", "_thread", "_closed")

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        # A daemon: an exit that never closed the storage must not hang on a thread waiting
        # for work (the pool joined its threads at exit instead). A call cut off by the exit
        # answered no one: nothing it wrote was acknowledged.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn()`` on the thread, after the calls given before it; its result (or exception)
        in the returned future."""
        if self._closed:
            raise RuntimeError("cannot run a call on a worker that is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, future, loop))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """No more calls; those already given still run. ``wait``: until they have."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _serve(self) -> None:
        take = self._calls.get
        while (call := take()) is not None:
            fn, future, loop = call
            if future.cancelled():  # (read across threads: a flag, as the pool's own check)
                continue
            try:
                result, failure = fn(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter, as the pool did
                result, failure = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, failure)
            except RuntimeError:
                pass  # the loop is closed: no one waits for this answer
            del call, fn, future, result, failure  # (not kept alive until the next call arrives)


def _settle(future: asyncio.Future[Any], result: Any, failure: BaseException | None) -> None:
    if future.cancelled():
        return
    if failure is None:
        future.set_result(result)
    else:
        future.set_exception(failure)
