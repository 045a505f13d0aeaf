"""What a benchmark run reports: ``BenchResult``, latency percentiles, and a plain-text table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class BenchResult:
    """One run. ``ops`` is what the benchmark counts (transactions, or rows for the ceiling);
    latencies are per database transaction, in milliseconds."""

    name: str
    backend: str  # "mariadb" | "sqlite"
    scenario: str
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, nearest-rank method.

    Nearest rank: the smallest value such that at least ``q`` percent of the values are <= it.
    An empty sequence gives ``nan``.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * n))
    return sorted_values[rank - 1]


def latency_percentiles(latencies_s: Iterable[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds of latencies given in seconds."""
    ordered = sorted(latencies_s)
    return tuple(percentile(ordered, q) * 1000.0 for q in (50, 95, 99))  # type: ignore[return-value]


def make_result(
    name: str, backend: str, scenario: str, ops: int, seconds: float, latencies_s: Iterable[float], **extra: Any
) -> BenchResult:
    p50, p95, p99 = latency_percentiles(latencies_s)
    return BenchResult(
        name=name,
        backend=backend,
        scenario=scenario,
        ops=ops,
        seconds=seconds,
        ops_per_s=ops / seconds if seconds > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        extra=extra,
    )


def format_table(results: Sequence[BenchResult], extra_keys: Sequence[str] = ()) -> str:
    """A fixed-width text table, one line per result."""
    head = ["name", "backend", "scenario", "ops", "s", "ops/s", "p50 ms", "p95 ms", "p99 ms", *extra_keys]
    rows = [
        [
            r.name, r.backend, r.scenario, str(r.ops), f"{r.seconds:.2f}", f"{r.ops_per_s:,.0f}",
            f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}", f"{r.p99_ms:.2f}",
            *(_fmt(r.extra.get(k, "")) for k in extra_keys),
        ]
        for r in results
    ]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
