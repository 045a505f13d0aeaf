"""The order a checkpoint round writes its rows in: the table's key order, put together a
step at a time instead of sorted at once.

Written in key order, a slice of the round touches a few neighbouring pages of the table
instead of one page per row (holds left pending on 10,000 accounts at half the maximum rate,
over HTTP: p99 15-17 ms in key order, 18-23 ms in the order the rows changed). Sorting the whole round when its first slice
was taken held the event loop ~8-10 ms for 10,000 holds (compiled), every round: the largest
stall left at half the maximum rate. A heap fed a step per slice costs each batch about the
same small amount; until every row is in it, a slice is the smallest of those fed so far
(the first slices' pages are a little less close together, nothing else differs).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

ORDER_STEP = 512  # rows put in the heap per slice taken, at least (twice the slice when larger)


class RoundOrder(Generic[T]):
    """Items smallest key first; ``key`` gives each a key, and two items never compare (ties
    on the key are broken by the order they were given in)."""

    __slots__ = ("_unordered", "_heap", "_key", "_fed")

    def __init__(self, items: list[T], key: Callable[[T], object]) -> None:
        self._unordered = items  # not in the heap yet (taken from the end)
        self._heap: list[tuple[object, int, T]] = []
        self._key = key
        self._fed = 0

    def feed(self, rows: int) -> None:
        """Before a slice of ``rows``: put the next step of items in the heap."""
        unordered, heap, key = self._unordered, self._heap, self._key
        for _ in range(min(len(unordered), max(ORDER_STEP, 2 * rows))):
            item = unordered.pop()
            self._fed += 1
            heapq.heappush(heap, (key(item), self._fed, item))

    def pop(self) -> T | None:
        """The smallest item fed so far (feeding more when none is left); None once every item
        has been taken."""
        if not self._heap:
            self.feed(0)
            if not self._heap:
                return None
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._unordered) + len(self._heap)
