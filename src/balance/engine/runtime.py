"""Process settings for a shard writer: the cyclic garbage collector's thresholds.

Each operation allocates a few dozen short-lived containers and keeps some (idempotency
records, holds). With CPython's default thresholds (700, 10, 10) the collector ran ~2,900
young and 21 full collections per 160,000 batched operations here, ~19% of the run
(measured with gc.callbacks; BENCHMARKS.md). The ledger's objects hold no reference cycles,
so the collector has little to find: collect the young generation every 50,000 allocations
instead (about 1 ms each) and the old ones rarely. Reference counting still frees everything
at once; only garbage in cycles waits longer.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
