"""The bench's disk probe: real syncs of a real file, timed, and put on the row's clock."""

from __future__ import annotations

import time
from pathlib import Path

from balance.bench import disk_probe
from balance.bench.disk_probe import DiskSyncProbe


def test_the_probe_times_each_sync_and_leaves_no_file(tmp_path: Path) -> None:
    probe = DiskSyncProbe(tmp_path, period_s=0.01)
    since = time.perf_counter()
    probe.start()
    time.sleep(0.3)
    probe.stop()
    figures = probe.figures(since=since)
    assert isinstance(figures["disk_syncs"], int) and figures["disk_syncs"] >= 5
    p50, p99, top = (float(figures[k]) for k in ("disk_sync_p50_ms", "disk_sync_p99_ms", "disk_sync_max_ms"))  # type: ignore[arg-type]
    assert 0 < p50 <= p99 <= top
    assert not probe.path.exists()


def test_slow_syncs_are_listed_on_the_row_clock(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(disk_probe, "SLOW_MS", 0.0)  # every sync counts as slow
    probe = DiskSyncProbe(tmp_path, period_s=0.01)
    since = time.perf_counter()
    probe.start()
    time.sleep(0.1)
    probe.stop()
    slow = probe.figures(since=since)["disk_slow_syncs"]
    assert isinstance(slow, list) and len(slow) == len(probe.samples)
    assert all(0 <= at < 1.0 and ms > 0 for at, ms in slow)
    assert [at for at, _ in slow] == sorted(at for at, _ in slow)


def test_no_sync_no_figures(tmp_path: Path) -> None:
    assert DiskSyncProbe(tmp_path).figures(since=0.0) == {}
