"""Medians of repeated tail runs, before and after side by side (issue 18's table).

``python -m balance.bench.tail_summary run-1.json run-2.json run-3.json`` reads the JSON that
``balance-service bench --scenario pending|gateway|tail --before-python ... --json`` writes and
prints a Markdown table: per backend and row, the median over the runs of the target rate,
the rate reached and p50/p95/p99/p99.9/max, the code before the change and after it on
adjacent lines, with after/before ratios of p99 and p99.9 (each run's pair first, then the
median of those ratios: the pairs ran one right after the other, so the ratio is what a
shared machine's noise disturbs least). The last column puts each run's row beside the disk:
the longest sync of the bench's disk probe in that row and, in brackets, the service's
commits over 50 ms (``balance.bench.disk_probe``): a stall over a long sync is the disk's.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _rows(paths: list[str]) -> tuple[dict[tuple[str, str, str], list[dict[str, Any]]], list[str]]:
    rows: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    loads: list[str] = []
    for path in paths:
        document = json.loads(Path(path).read_text())
        loads.append(str(document.get("load", "")))
        for result in document["results"]:
            code = result["extra"].get("code", "")
            rows.setdefault((result["backend"], result["scenario"], code), []).append(result)
    return rows, loads


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(paths: list[str]) -> str:
    rows, loads = _rows(paths)
    lines = [
        "| backend | row | code | target/s | ops/s | p50 | p95 | p99 | p99.9 | max ms | p99 after/before"
        " | p99.9 after/before | per run: disk's longest sync ms (commits over 50 ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (backend, scenario, code), results in rows.items():
        x = [r["extra"] for r in results]
        target = _median([e["target_rate"] for e in x if e.get("target_rate")])
        cells = [
            f"{_median([r['ops_per_s'] for r in results]):,.0f}",
            *(f"{_median([r[k] for r in results]):.1f}" for k in ("p50_ms", "p95_ms", "p99_ms")),
            *(f"{_median([e[k] for e in x]):.1f}" for k in ("p999_ms", "max_ms")),
        ]
        ratios = ["", ""]
        before = rows.get((backend, scenario, "before"))
        if code == "after" and before:
            for i, key in enumerate(("p99_ms", "p999_ms")):
                pairs = [
                    (a["p99_ms"] if key == "p99_ms" else a["extra"][key])
                    / (b["p99_ms"] if key == "p99_ms" else b["extra"][key])
                    for a, b in zip(results, before, strict=False)
                ]
                ratios[i] = f"{_median(pairs):.2f} ({', '.join(f'{p:.2f}' for p in pairs)})"
        target_cell = "closed" if target != target else f"{target:,.0f}"  # nan: the closed-loop maximum
        disk = ", ".join(
            f"{e['disk_sync_max_ms']:.0f} ({e.get('slow_commits', 0):.0f})" for e in x if "disk_sync_max_ms" in e
        )
        lines.append(
            f"| {backend} | {scenario} | {code} | {target_cell} | {' | '.join(cells)} | {' | '.join(ratios)} | {disk} |"
        )
    runs = ", ".join(f"run {i + 1}: {load}" for i, load in enumerate(loads) if load)
    return "\n".join(lines) + (f"\n\nMachine load (uptime) per run: {runs}\n" if runs else "\n")


if __name__ == "__main__":
    print(table(sys.argv[1:]))
