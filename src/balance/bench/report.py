"""Medians of several `balance-service bench --json` runs, as a Markdown table.

    python -m balance.bench.report benchmarks/run-*.json

Ratios are taken inside each run (ours / naive and ours / ceiling of the same run), then
their median across runs: the machine is noisy, a ratio from one run is what is comparable.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _key(result: dict[str, Any]) -> tuple[str, str, str]:
    return result["backend"], result["name"], result["scenario"]


def medians(paths: list[Path]) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    order: list[tuple[str, str, str]] = []
    for path in paths:
        for result in json.loads(path.read_text())["results"]:
            key = _key(result)
            if key not in grouped:
                order.append(key)
            grouped[key].append(result)
    rows = []
    for key in order:
        runs = grouped[key]

        def med(get: Any, runs: list[dict[str, Any]] = runs) -> float | None:
            values = [v for r in runs if (v := get(r)) is not None]
            return statistics.median(values) if values else None

        rows.append({
            "backend": key[0], "what": key[1], "scenario": key[2], "runs": len(runs),
            "ops_per_s": med(lambda r: r["ops_per_s"]),
            "ops_per_s_all": sorted(round(r["ops_per_s"]) for r in runs),
            "p50_ms": med(lambda r: r["p50_ms"] or None), "p99_ms": med(lambda r: r["p99_ms"] or None),
            "x_naive": med(lambda r: r["extra"].get("x_naive")),
            "of_ceiling": med(lambda r: r["extra"].get("of_ceiling")),
            "peak_rss_mb": med(lambda r: r["extra"].get("peak_rss_mb")),
            "loadgen_cpu": med(lambda r: r["extra"].get("loadgen_cpu")),
            "service_cpu": med(lambda r: r["extra"].get("service_cpu", r["extra"].get("client_cpu"))),
            "db_cpu": med(lambda r: r["extra"].get("db_cpu", r["extra"].get("server_cpu"))),
            "machine_cpu": med(lambda r: r["extra"].get("machine_cpu")),
            "ready_s": med(lambda r: r["extra"].get("ready_s")),
            "bytes_per_account": med(lambda r: r["extra"].get("bytes_per_account")),
            "bytes_per_hold": med(lambda r: r["extra"].get("bytes_per_hold")),
        })  # fmt: skip
    return rows


def _f(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | what | scenario | ops/s (median) | all runs | p50 ms | p99 ms | × naive | of ceiling | "
        "service CPU | DB CPU | load-gen CPU | machine CPU | peak RSS MB |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["what"] == "recovery":
            continue
        lines.append(
            f"| {r['backend']} | {r['what']} | {r['scenario']} | {_f(r['ops_per_s'], ',.0f')} | "
            f"{', '.join(f'{v:,}' for v in r['ops_per_s_all'])} | {_f(r['p50_ms'], '.1f')} | {_f(r['p99_ms'], '.1f')} | "
            f"{_f(r['x_naive'], '.1f')} | {_f(r['of_ceiling'], '.0%')} | {_f(r['service_cpu'], '.2f')} | "
            f"{_f(r['db_cpu'], '.2f')} | {_f(r['loadgen_cpu'], '.2f')} | {_f(r['machine_cpu'], '.2f')} | "
            f"{_f(r['peak_rss_mb'], '.0f')} |"
        )
    recovery = [r for r in rows if r["what"] == "recovery"]
    if recovery:
        lines += [
            "",
            "| backend | recovery | start → ready s | bytes/account | bytes/pending hold |",
            "|---|---|---:|---:|---:|",
        ]
        for r in recovery:
            lines.append(
                f"| {r['backend']} | {r['scenario']} | {_f(r['ready_s'], '.1f')} | "
                f"{_f(r['bytes_per_account'], '.0f')} | {_f(r['bytes_per_hold'], '.0f')} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv]
    if not paths:
        print(__doc__)
        return 2
    print(markdown(medians(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
