"""The expiry-burst bench (issue 18) on a real SQLite file: every hold of the burst expires,
sliced and all at once, the books balance after each, and the row reports the other traffic
with and without the burst."""

from __future__ import annotations

from pathlib import Path

from balance.bench.expiry import run_expiry_burst


async def test_an_expiry_burst_expires_every_hold_and_reports_the_other_traffic(tmp_path: Path) -> None:
    result = await run_expiry_burst("sqlite", holds=3000, work_dir=tmp_path, quiet_s=0.5)
    assert result.ops == 3000 and result.seconds > 0
    assert result.extra["all_at_once_s"] > 0
    assert result.extra["other_p99_no_burst_ms"] > 0 and result.extra["other_max_no_burst_ms"] > 0
    assert "no burst" in str(result.extra["notes"])
