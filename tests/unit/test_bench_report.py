"""The medians report of several bench runs (no timing here: it only aggregates numbers)."""

from __future__ import annotations

import json
from pathlib import Path

from balance.bench.report import markdown, medians


def _run(path: Path, ops: list[float], x_naive: float) -> Path:
    results = [
        {"backend": "sqlite", "name": "naive", "scenario": "hot", "ops_per_s": ops[0], "p50_ms": 1.0, "p99_ms": 2.0,
         "extra": {}},
        {"backend": "sqlite", "name": "engine", "scenario": "hot", "ops_per_s": ops[1], "p50_ms": 3.0, "p99_ms": 9.0,
         "extra": {"x_naive": x_naive, "client_cpu": 0.5, "machine_cpu": ops[1] / 1000}},
        {"backend": "sqlite", "name": "recovery", "scenario": "10 + 10", "ops_per_s": 1.0, "p50_ms": 0, "p99_ms": 0,
         "extra": {"ready_s": ops[2], "bytes_per_account": 300.0, "bytes_per_hold": 400.0}},
    ]  # fmt: skip
    path.write_text(json.dumps({"results": results}))
    return path


def test_each_figure_is_the_median_of_the_runs_and_ratios_are_taken_within_runs(tmp_path: Path) -> None:
    paths = [
        _run(tmp_path / "a.json", [100, 1000, 5.0], 10.0),
        _run(tmp_path / "b.json", [300, 1500, 7.0], 5.0),
        _run(tmp_path / "c.json", [200, 1200, 6.0], 6.0),
    ]
    rows = {(r["what"]): r for r in medians(paths)}
    assert rows["naive"]["ops_per_s"] == 200
    assert rows["engine"]["ops_per_s"] == 1200
    assert rows["engine"]["x_naive"] == 6.0  # median of the per-run ratios, not 1200 / 200
    assert rows["engine"]["ops_per_s_all"] == [1000, 1200, 1500]
    assert rows["recovery"]["ready_s"] == 6.0
    text = markdown(list(rows.values()))
    assert "| sqlite | engine | hot | 1,200 | 1,000, 1,200, 1,500 |" in text
    engine_line = next(line for line in text.splitlines() if "| engine |" in line)
    assert engine_line.endswith("| 0.50 |  |  | 1.20 |  |")  # service, DB, load-gen, machine CPU, RSS
    assert "| sqlite | 10 + 10 | 6.0 | 300 | 400 |" in text
