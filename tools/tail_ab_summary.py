"""Medians of the interleaved before/after pairs that tools/tail_ab.sh wrote into a directory:
p99, p99.9, the service's CPU per operation and the disk's sync p99, per scenario and rate.

    .venv/bin/python tools/tail_ab_summary.py benchmarks/session-20/ab-sqlite
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

cells: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
for path in sorted(Path(sys.argv[1]).glob("r*-*.json")):
    for row in json.loads(path.read_text())["results"]:
        extra = row["extra"]
        if extra.get("fraction") is None:
            continue
        cells[(extra["tail_scenario"], f"{extra['fraction']:.0%}", extra["code"])].append(
            {"p99": row["p99_ms"], "p999": extra["p999_ms"], "max": extra["max_ms"], "disk": extra["disk_sync_p99_ms"],
             "commit_ms": extra["commit_ms"], "cpu": extra.get("cpu_us_per_op") or 0.0, "busy": extra["commit_busy"], "rate": extra["target_rate"]}
        )
print("| scenario | rate | p99 before (runs) | p99 after (runs) | median p99 before → after | p99.9 medians | service CPU us/op medians | disk sync p99 per run, before / after |")
print("|---|---|---|---|---|---|---|---|")
for scenario, fraction in sorted({key[:2] for key in cells}):
    before, after = cells[(scenario, fraction, "before")], cells[(scenario, fraction, "after")]
    fmt = lambda rows, k: ", ".join(f"{r[k]:.1f}" for r in rows)  # noqa: E731
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"| {scenario} | {fraction} ({before[0]['rate']:,.0f}/s) | {fmt(before, 'p99')} | {fmt(after, 'p99')} | "
          f"{med(before, 'p99'):.1f} → {med(after, 'p99'):.1f} | {med(before, 'p999'):.1f} → {med(after, 'p999'):.1f} | "
          f"{med(before, 'cpu'):.0f} → {med(after, 'cpu'):.0f} | "
          f"{fmt(before, 'disk')} / {fmt(after, 'disk')} |")
