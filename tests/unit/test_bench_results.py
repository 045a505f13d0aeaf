"""The percentile helper of the benchmark results (nearest-rank)."""

from __future__ import annotations

import math

import pytest

from balance.bench.results import latency_percentiles, make_result, percentile


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_percentile_small_samples() -> None:
    assert percentile([7.0], 50) == 7.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2], 50) == 1
    assert percentile([1, 2], 51) == 2
    assert percentile([1, 2, 3, 4], 75) == 3
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([1, 2, 3], 101)
    with pytest.raises(ValueError):
        percentile([1, 2, 3], -1)


def test_latency_percentiles_sort_and_convert_to_ms() -> None:
    latencies_s = [0.010, 0.001, 0.005, 0.002, 0.100] * 20  # unsorted, 100 values
    p50, p95, p99 = latency_percentiles(latencies_s)
    assert p50 == pytest.approx(5.0)
    assert p95 == pytest.approx(100.0)
    assert p99 == pytest.approx(100.0)


def test_make_result_rate_and_extra() -> None:
    result = make_result("naive", "sqlite", "hot", 200, 2.0, [0.001] * 200, clients=4)
    assert result.ops_per_s == 100.0
    assert result.p50_ms == pytest.approx(1.0)
    assert result.extra == {"clients": 4}
    assert result.to_dict()["ops"] == 200
    empty = make_result("naive", "sqlite", "hot", 0, 0.0, [])
    assert empty.ops_per_s == 0.0 and math.isnan(empty.p99_ms)
