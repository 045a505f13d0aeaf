"""Time for the engine, injectable so tests control expiry."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]  # microseconds since the epoch


def system_clock() -> int:
    return time.time_ns() // 1000


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start_us: int = 1_790_000_000_000_000) -> None:
        self.now_us = start_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1_000_000)
