"""How long a consumer waits before putting back a result the engine could not take (a shard
recovering, storage away): doubling while it keeps failing, back to the start on a success."""

from __future__ import annotations

FIRST_S = 0.2
MAX_S = 2.0


class RetryDelay:
    def __init__(self) -> None:
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return min(MAX_S, FIRST_S * float(1 << min(self.failures - 1, 10)))

    def reset(self) -> None:
        self.failures = 0
