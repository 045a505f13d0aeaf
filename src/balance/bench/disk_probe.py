"""The disk's own sync latency while a bench row runs, so that a stall in the row can be put on
the disk or on the service.

Every commit the service acknowledges waits for a sync of the database's log (SQLite's WAL,
MariaDB's redo log). On a virtual machine's shared disk a sync sometimes takes 100 ms or a
second for reasons outside the service (the host's other tenants, the file system's journal,
online discard of deleted files): every answer queued behind it then waits as long. The probe
writes one 4 KiB block and syncs it (``fdatasync``) every ``PERIOD_S`` in a thread of the bench,
in a file on the same file system as the database, and keeps each sync's time; the row reports
their p50, p99 and max, and the chart draws the slow ones under the answers.

It adds ~50 small syncs a second to the service's ~1,000: too few to move the row's figures.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from balance.bench.results import percentile

PERIOD_S = 0.02
SLOW_MS = 20.0  # a sync this slow is drawn on the chart
BLOCK = b"\0" * 4096


class DiskSyncProbe:
    """Syncs of a small file on a directory's file system, timed, in a thread of its own."""

    def __init__(self, directory: Path, period_s: float = PERIOD_S) -> None:
        self.path = directory / "disk-sync-probe"
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []  # (perf_counter at the sync's start, seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="disk-sync-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                os.pwrite(fd, BLOCK, 0)
                os.fdatasync(fd)
                took = time.perf_counter() - started
                self.samples.append((started, took))
                self._stop.wait(max(0.0, self.period_s - took))
        finally:
            os.close(fd)

    def figures(self, since: float) -> dict[str, object]:
        """p50/p99/max of the syncs (ms), and the slow ones as (seconds since ``since``, ms)."""
        ordered = sorted(took for _, took in self.samples)
        if not ordered:
            return {}
        return {
            "disk_sync_p50_ms": percentile(ordered, 50) * 1000,
            "disk_sync_p99_ms": percentile(ordered, 99) * 1000,
            "disk_sync_max_ms": ordered[-1] * 1000,
            "disk_syncs": len(ordered),
            "disk_slow_syncs": [(at - since, took * 1000) for at, took in self.samples if took * 1000 >= SLOW_MS],
        }
