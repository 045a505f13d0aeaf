"""The tail bench's account of the server over a load: commits counted over the load only."""

from __future__ import annotations

from balance.bench.tail import _ServerFigures


def test_commits_over_the_threshold_are_those_of_the_load() -> None:
    start = _ServerFigures(cpu_s=1.0, commits=10.0, commit_s=0.1, quick_commits=8.0)  # 2 slow before the load
    end = _ServerFigures(cpu_s=2.0, commits=110.0, commit_s=1.1, quick_commits=101.0)  # 9 slow in all
    figures = end.since(start, ops=500)
    assert figures["commits"] == 100.0
    assert figures["slow_commits"] == 7.0  # 100 commits, 93 of them quick
    assert figures["commit_ms"] == 10.0
    assert figures["cpu_us_per_op"] == 2000.0
