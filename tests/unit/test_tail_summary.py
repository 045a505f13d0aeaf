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
