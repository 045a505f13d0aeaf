"""Process settings for a shard writer: the cyclic garbage collector's thresholds.

Each operation allocates a few dozen short-lived containers and keeps some (idempotency
records, holds). With CPython's default thresholds (700, 10, 10) the collector ran ~2,900
young and 21 full collections per 160,000 batched operations here, ~19% of the run
(measured with gc.callbacks; BENCHMARKS.md). The ledger's objects hold no reference cycles,
so the collector has little to find: collect the young generation every 50,000 allocations
instead and the old ones rarely. Reference counting still frees everything at once; only
garbage in cycles waits longer. ``BALANCE_GC_THRESHOLDS=700,10,10`` (three integers) sets
other values, e.g. CPython's defaults.
"""

from __future__ import annotations

import gc
import os

GC_THRESHOLDS = (50_000, 20, 100)


def gc_thresholds(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    raw = (os.environ if env is None else env).get("BALANCE_GC_THRESHOLDS", "")
    if not raw:
        return GC_THRESHOLDS
    parts = tuple(int(part) for part in raw.split(","))
    if len(parts) != 3 or min(parts) < 0:
        raise ValueError("BALANCE_GC_THRESHOLDS must be three non-negative integers, e.g. 50000,20,100")
    return parts[0], parts[1], parts[2]


def tune_gc() -> None:
    gc.set_threshold(*gc_thresholds())
