"""The tail summary's medians and after/before ratios (issue 18's table)."""

from __future__ import annotations

import json
from pathlib import Path

from balance.bench.tail_summary import table


def _row(code: str, p99: float, p999: float, target: float | None = 1000.0) -> dict[str, object]:
    return {
        "backend": "sqlite", "scenario": "pending-hot single 50%", "ops_per_s": 1000.0, "p50_ms": 1.0,
        "p95_ms": 2.0, "p99_ms": p99, "extra": {"code": code, "target_rate": target, "p999_ms": p999, "max_ms": p999},
    }  # fmt: skip


def test_medians_and_the_ratio_of_each_runs_pair(tmp_path: Path) -> None:
    paths = []
    for k, (before, after) in enumerate([(10.0, 5.0), (20.0, 40.0), (30.0, 3.0)]):
        path = tmp_path / f"run-{k}.json"
        document = {
            "load": f"load {k}",
            "results": [_row("before", before, 2 * before), _row("after", after, 2 * after)],
        }
        path.write_text(json.dumps(document))
        paths.append(str(path))
    text = table(paths)
    before_line = next(line for line in text.splitlines() if "| before |" in line)
    after_line = next(line for line in text.splitlines() if "| after |" in line)
    assert "| 20.0 | 40.0 | 40.0 |" in before_line  # medians of p99, p99.9, max
    assert "| 5.0 | 10.0 | 10.0 |" in after_line
    assert "0.50 (0.50, 2.00, 0.10)" in after_line  # each run's after/before, then their median
    assert "run 1: load 0" in text


def test_each_run_is_put_beside_its_disk(tmp_path: Path) -> None:
    paths = []
    for k, (sync_ms, slow) in enumerate([(4.0, 0.0), (253.0, 5.0)]):
        row = _row("after", 10.0, 20.0)
        row["extra"].update({"disk_sync_max_ms": sync_ms, "slow_commits": slow})  # type: ignore[attr-defined]
        path = tmp_path / f"run-{k}.json"
        path.write_text(json.dumps({"results": [row, _row("before", 10.0, 20.0)]}))
        paths.append(str(path))
    lines = table(paths).splitlines()
    after_line = next(line for line in lines if "| after |" in line)
    before_line = next(line for line in lines if "| before |" in line)
    assert after_line.endswith("| 4 (0), 253 (5) |")
    assert before_line.endswith("|  |")  # a run without the probe: nothing made up
