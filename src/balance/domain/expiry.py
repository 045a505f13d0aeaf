"""When pending holds expire: a wheel of one-second buckets the sweep takes due holds from."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from balance.domain.model import Hold
from balance.untrack import untrack


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
        due: list[Hold] = []
        seen: set[int] = set()
        while self.seconds and self.seconds[0] <= now // 1_000_000:
            second = self.seconds[0]
            keep: list[Hold] = []
            for hold in self.buckets[second]:
                if id(hold) in seen or not is_live(hold):
                    continue
                seen.add(id(hold))
                (due if hold.expires_at <= now and len(due) < limit else keep).append(hold)
            if keep:  # later in this second, or over the limit: they wait for the next sweep
                self.buckets[second] = keep
                untrack(keep)
                break
            del self.buckets[second]
            heapq.heappop(self.seconds)
        return due

    def oldest_due(self, now: int, is_live: Callable[[Hold], bool]) -> int | None:
        """The earliest expiry among live holds due by ``now``; drops the stale entries it passes."""
        while self.seconds and self.seconds[0] <= now // 1_000_000:
            second = self.seconds[0]
            live = [hold for hold in self.buckets[second] if is_live(hold)]
            if live:
                self.buckets[second] = live
                untrack(live)
                oldest = min(hold.expires_at for hold in live)
                return oldest if oldest <= now else None
            del self.buckets[second]
            heapq.heappop(self.seconds)
        return None
