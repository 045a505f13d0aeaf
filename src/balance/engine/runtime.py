"""Process settings for a shard writer: the cyclic garbage collector's thresholds, and how
long a thread may hold the GIL while another waits for it.

Each operation allocates a few dozen short-lived containers and keeps some (idempotency
records, holds). With CPython's default thresholds (700, 10, 10) the collector ran ~2,900
young and 21 full collections per 160,000 batched operations here, ~19% of the run
(measured with gc.callbacks; BENCHMARKS.md). The ledger's objects hold no reference cycles,
so the collector has little to find: collect the young generation every 50,000 allocations
instead and the old ones rarely. Reference counting still frees everything at once; only
garbage in cycles waits longer. ``BALANCE_GC_THRESHOLDS=700,10,10`` (three integers) sets
other values, e.g. CPython's defaults.

What a shard keeps for long (accounts, holds, idempotency records and their keys, the expiry
wheel's buckets) is untracked by the collector when made (``balance.untrack``: atomic values
only, no cycle can run through them), and the two dicts that grow with it are frozen by
recovery (``untrack.tracked``): a collection walks the traffic in flight, not the pending
holds (benchmarks/tail-latency.md, session 12: with 300,000 pending holds a full collection
took 203 ms, now 9.4 ms; no tracked object per pending hold is left, 2.14 before).

SQLite's writer thread gives up the GIL around every statement it runs, and takes it back
after; while the event loop applies a large batch (pure Python, ~15 ms per 1,000
operations) it waited up to CPython's 5 ms switch interval each time: sampled under
batches of 1,000, 48% of the writer's time. A 0.5 ms interval hands the GIL over sooner
(BENCHMARKS.md: batches of 1,000 and 8,190 on SQLite 1.06-1.13x; MariaDB's storage runs no
thread, so nothing waits there). ``BALANCE_GIL_SWITCH_MS`` sets another value.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

GC_THRESHOLDS = (50_000, 20, 100)
SWITCH_INTERVAL_MS = 0.5


def gc_thresholds(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    raw = (os.environ if env is None else env).get("BALANCE_GC_THRESHOLDS", "")
    if not raw:
        return GC_THRESHOLDS
    parts = tuple(int(part) for part in raw.split(","))
    if len(parts) != 3 or min(parts) < 0:
        raise ValueError("BALANCE_GC_THRESHOLDS must be three non-negative integers, e.g. 50000,20,100")
    return parts[0], parts[1], parts[2]


def switch_interval_ms(env: dict[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get("BALANCE_GIL_SWITCH_MS", "")
    if not raw:
        return SWITCH_INTERVAL_MS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 100:
        raise ValueError("BALANCE_GIL_SWITCH_MS must be a number of milliseconds from 0.01 to 100, e.g. 0.5")
    return value


def tune_runtime() -> None:
    gc.set_threshold(*gc_thresholds())
    sys.setswitchinterval(switch_interval_ms() / 1000)


@contextmanager
def tuned() -> Iterator[None]:
    """``tune_runtime()`` for a while (the bench's engine in process), then the settings before,
    so that the baselines measured after it in the same process run with CPython's defaults."""
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    tune_runtime()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
