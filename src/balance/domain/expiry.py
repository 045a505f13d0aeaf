"""When pending holds expire: a wheel of one-second buckets the sweep takes due holds from."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from balance.domain.model import Hold
from balance.untrack import untrack

OLDEST_SAMPLE = 1024  # holds of the oldest second looked at for the expiry lag


class ExpiryWheel:
    """Pending holds by the second they expire in.

    8 bytes per hold in a bucket list, instead of a 64-byte (expires_at, account, id) tuple on
    a heap: at millions of pending holds that is most of a hold's memory. Entries are lazy:
    a hold that was captured, released or rolled back is skipped when its second comes.

    The bucket lists hold only holds, which are untracked by the cyclic GC (``balance.untrack``)
    and reference nothing but atomic values: the lists are untracked too, so a full collection
    does not visit every pending hold through them. Keep it so: a bucket holds holds only.
    """

    __slots__ = ("buckets", "seconds")

    def __init__(self) -> None:
        self.buckets: dict[int, list[Hold]] = {}
        self.seconds: list[int] = []  # heap of the bucket keys

    def add(self, hold: Hold) -> None:
        second = hold.expires_at // 1_000_000
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = []
            untrack(bucket)
            heapq.heappush(self.seconds, second)
        bucket.append(hold)

    def take_due(self, now: int, limit: int, is_live: Callable[[Hold], bool]) -> list[Hold]:
        """Up to ``limit`` live holds due by ``now``, oldest second first; stale entries met
        are dropped. Taken from the end of a bucket, so a call costs what it takes, not the
        bucket's size: scanning the whole bucket on every call (100,000 holds expiring in one
        second, taken 512 at a time) held the event loop ~50 ms per slice."""
        due: list[Hold] = []
        seen: set[int] = set()
        while self.seconds and self.seconds[0] <= now // 1_000_000 and len(due) < limit:
            second = self.seconds[0]
            bucket = self.buckets[second]
            later: list[Hold] = []
            while bucket and len(due) < limit:
                hold = bucket.pop()
                if id(hold) in seen or not is_live(hold):
                    continue
                seen.add(id(hold))
                (due if hold.expires_at <= now else later).append(hold)
            if later:  # later in this second: back at the front, for a later sweep
                bucket[0:0] = later
            if bucket:  # over the limit, or only later ones left (this is the current second)
                break
            del self.buckets[second]
            heapq.heappop(self.seconds)
        return due

    def oldest_due(self, now: int, is_live: Callable[[Hold], bool]) -> int | None:
        """The earliest expiry among live holds due by ``now``, to within the oldest second
        (it looks at up to ``OLDEST_SAMPLE`` of that second's holds, not all: a metric must
        not hold the loop); drops the stale entries it passes."""
        while self.seconds and self.seconds[0] <= now // 1_000_000:
            second = self.seconds[0]
            bucket = self.buckets[second]
            while bucket and not is_live(bucket[-1]):
                bucket.pop()
            if bucket:
                oldest = min(hold.expires_at for hold in bucket[-OLDEST_SAMPLE:] if is_live(hold))
                return oldest if oldest <= now else None
            del self.buckets[second]
            heapq.heappop(self.seconds)
        return None
