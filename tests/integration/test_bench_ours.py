"""The bench's own measurements run and leave the books balanced (a correctness check, no timing)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from balance.bench import ours, wrk
from ci import skip_or_fail


async def test_the_engine_measurement_counts_answered_operations_and_checks_invariants(tmp_path: Path) -> None:
    result = await ours.run_engine("sqlite", "mix", clients=8, duration_s=0.3, work_dir=tmp_path)
    assert result.ops > 0 and result.ops_per_s > 0
    assert result.p50_ms <= result.p99_ms


async def test_the_batch_endpoint_measurement_runs_against_a_real_server(tmp_path: Path) -> None:
    result = await ours.run_http_batch("sqlite", "hot", batch_size=50, senders=2, duration_s=0.3, work_dir=tmp_path)
    assert result.ops >= 50 and result.extra["errors"] == 0
    assert result.extra["peak_rss_mb"] > 0


async def test_single_operation_http_is_driven_by_wrk(tmp_path: Path) -> None:
    if not wrk.available():  # in CI (.ci/run installs it) a missing wrk fails the test
        skip_or_fail("wrk is not installed (apt-get install wrk): the single-operation load generator")
    result = await ours.run_http_single("sqlite", "hot", clients=4, duration_s=1, work_dir=tmp_path)
    assert result.ops > 0 and result.extra["errors"] == 0


async def test_the_sqlite_durability_reported_is_read_back_from_a_connection_opened_like_the_service() -> None:
    assert await ours.durability_settings("sqlite") == {"journal_mode": "wal", "synchronous": "FULL (2)"}


@pytest.mark.mariadb
async def test_the_mariadb_durability_reported_is_read_from_the_server(
    mariadb_required: Callable[[], Awaitable[str]],
) -> None:
    """(The bench once reported '?' here: it asked from inside the running event loop.)"""
    await mariadb_required()
    settings = await ours.durability_settings("mariadb")
    assert settings["innodb_flush_log_at_trx_commit"] in {"0", "1", "2"}
    assert settings["log_bin"] in {"ON", "OFF"}


def test_the_pending_scenarios_only_place_holds_and_pending_hot_keeps_to_one_account() -> None:
    """``pending-*`` is ``hot``'s load with holds that are never settled (issue 18's throughput)."""
    ids = [f"US-0-{i:016x}" for i in range(10)]
    for scenario, accounts in (("pending-hot", {ids[0]}), ("pending-10k", set(ids))):
        flows = ours.Workload(scenario, ids, {}, "t", 1).flows()
        seen = [next(flows) for _ in range(500)]
        assert all(len(flow) == 1 and type(flow[0]).__name__ == "PlaceHold" for flow in seen)
        assert {flow[0].account_id for flow in seen} == accounts
    hot = ours.Workload("hot", ids, {}, "t", 1).flows()
    assert all(len(next(hot)) == 2 for _ in range(50))  # hot still settles every hold


async def test_the_pending_scenario_runs_on_the_batch_endpoint(tmp_path: Path) -> None:
    result = await ours.run_http_batch(
        "sqlite", "pending-hot", batch_size=50, senders=2, duration_s=0.3, work_dir=tmp_path
    )
    assert result.ops >= 50 and result.extra["errors"] == 0
