"""The tail bench's account of the server over a load: commits counted over the load only."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from balance.bench.tail import _ServerFigures
from balance.metrics import Metrics


def test_commits_over_the_threshold_are_those_of_the_load() -> None:
    start = _ServerFigures(cpu_s=1.0, commits=10.0, commit_s=0.1, quick_commits=8.0)  # 2 slow before the load
    end = _ServerFigures(cpu_s=2.0, commits=110.0, commit_s=1.1, quick_commits=101.0)  # 9 slow in all
    figures = end.since(start, ops=500)
    assert figures["commits"] == 100.0
    assert figures["slow_commits"] == 7.0  # 100 commits, 93 of them quick
    assert figures["commit_ms"] == 10.0
    assert figures["cpu_us_per_op"] == 2000.0


def test_the_writers_duty_cycle_is_its_busy_time_over_the_load_and_absent_before_the_metric() -> None:
    """Over the time between the two readings (the load, and the drain of what it left queued)."""
    start = _ServerFigures(cpu_s=1.0, commits=10.0, commit_s=0.1, quick_commits=10.0, busy_s=3.0, at=100.0)
    end = _ServerFigures(cpu_s=2.0, commits=110.0, commit_s=1.1, quick_commits=110.0, busy_s=7.5, at=110.0)
    assert end.since(start, ops=500)["commit_busy"] == 0.45
    older = _ServerFigures(cpu_s=2.0, commits=110.0, commit_s=1.1, quick_commits=110.0, at=110.0)  # no metric
    assert "commit_busy" not in older.since(_ServerFigures(1.0, 10.0, 0.1, 10.0, at=100.0), ops=500)


def test_the_figures_are_read_off_the_services_own_metrics_page_summed_over_shards() -> None:
    metrics = Metrics()
    for shard, seconds in (("0", 0.01), ("0", 0.2), ("1", 0.03)):  # one commit over 50 ms
        metrics.commit_seconds.labels(shard).observe(seconds)
    metrics.commit_busy.labels("0").inc(0.21)
    metrics.commit_busy.labels("1").inc(0.03)
    figures = _ServerFigures.from_text(generate_latest(metrics.registry).decode(), cpu_s=1.5, at=7.0)
    assert (figures.commits, figures.quick_commits, figures.cpu_s, figures.at) == (3.0, 2.0, 1.5, 7.0)
    assert figures.commit_s == pytest.approx(0.24)
    assert figures.busy_s == pytest.approx(0.24)
