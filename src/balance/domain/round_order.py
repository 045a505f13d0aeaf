"""The order a checkpoint round writes its rows in: the table's key order, put together a
slice at a time instead of sorted at once.

Written in key order, a slice of the round touches a few neighbouring pages of the table
instead of one page per row (holds left pending on 10,000 accounts at half the maximum rate,
over HTTP, rounds paced by time alone: p99 14.9 ms in key order, 23.0 in the order the rows
changed; benchmarks/tail-latency.md, "Session 14"). Sorting the
whole round when its first slice was taken held the event loop ~8-10 ms for 10,000 holds
(compiled), every round: the largest stall left at half the maximum rate. Each slice now
sorts a run of the next ``ORDER_STEP`` rows (or twice the slice), and the rows are taken
smallest first across the runs sorted so far (a merge of their heads): ~0.1 ms a slice.
Until every row is in a run, a slice is the smallest of those sorted so far (the first
slices' pages are a little less close together; nothing else differs). Keys are one value
(one comparison each, not a tuple's): a string for ``(a, b)`` as ``a + "\x00" + b``, or the
key's first column alone where that places rows close enough (a hold's expiry).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", str, int)

ORDER_STEP = 512  # rows sorted per slice taken, at least (twice the slice when larger)


class RoundOrder(Generic[T, K]):
    """Items smallest key first. Two items never compare: runs are sorted by key (stable), and
    runs' heads are ranked by (key, run)."""

    __slots__ = ("_unordered", "_runs", "_heads", "_key")

    def __init__(self, items: list[T], key: Callable[[T], K]) -> None:
        self._unordered = items  # in no run yet (taken from the end)
        self._runs: list[list[T]] = []  # each sorted, largest first (taken from the end)
        self._heads: list[tuple[K, int]] = []  # a heap: each run's smallest key, and the run
        self._key: Callable[[T], K] = key

    def feed(self, rows: int) -> None:
        """Before a slice of ``rows``: sort the next run of items."""
        unordered = self._unordered
        step = min(len(unordered), max(ORDER_STEP, 2 * rows))
        if step == 0:
            return
        run = unordered[-step:]
        del unordered[-step:]
        key = self._key
        run.sort(key=key, reverse=True)
        self._runs.append(run)
        heapq.heappush(self._heads, (key(run[-1]), len(self._runs) - 1))

    def pop(self) -> T | None:
        """The smallest item of the runs so far (sorting another when none is left); None once
        every item has been taken."""
        heads = self._heads
        if not heads:
            self.feed(0)
            if not heads:
                return None
        index = heads[0][1]
        run = self._runs[index]
        item = run.pop()
        if run:
            heapq.heapreplace(heads, (self._key(run[-1]), index))
        else:
            heapq.heappop(heads)
        return item

    def __len__(self) -> int:
        return len(self._unordered) + sum(len(run) for run in self._runs)
