"""Memory per account and per pending hold, and the time from start to ready, at scale.

The shard database is filled directly (bulk rows, not the measured path), then two fresh
processes run the real recovery code: one measures resident memory after accounts and
after holds are in the ledger, the other times ``ShardEngine.start()`` to ready.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from balance.bench.ours import scratch_storage
from balance.bench.results import BenchResult
from balance.storage.base import BatchWrite, ShardStorage

T0 = 1_790_000_000_000_000
_CHUNK = 20_000


def _account_row(i: int, reserved: int) -> tuple[Any, ...]:
    return (f"US-0-{i:016x}", None, "user", "US", "USD", "", "active", 10**9, reserved, 0, False, 2, T0, T0, b"{}")


def _hold_row(i: int, account: int) -> tuple[Any, ...]:
    return (f"US-0-{account:016x}", f"order-{i:010d}", 1, 0, "USD", "pending", None, T0 + 900_000_000 + i,
            T0, T0, "", b"{}")  # fmt: skip


async def fill(storage: ShardStorage, accounts: int, holds: int, progress: Any = None) -> None:
    """``accounts`` accounts and ``holds`` pending holds spread over them (sums kept at zero).

    Called twice: with ``holds=0`` first (accounts only), then with the holds (the account
    rows are rewritten with their ``reserved``)."""
    await storage.open()
    per_account = [holds // accounts + (1 if i < holds % accounts else 0) for i in range(accounts)]
    funding = ("SYS-0-funding-USD", None, "funding", "SYS", "USD", "", "active", -(10**9) * accounts, 0, 0,
               False, 2, T0, T0, b"{}")  # fmt: skip
    settlement = ("SYS-0-settlement-USD", None, "settlement", "SYS", "USD", "", "active", 0, 0, 0, False, 1,
                  T0, T0, b"{}")  # fmt: skip
    await storage.commit(BatchWrite(accounts=[funding, settlement]))
    for start in range(0, accounts, _CHUNK):
        rows = [_account_row(i, per_account[i]) for i in range(start, min(accounts, start + _CHUNK))]
        await storage.commit(BatchWrite(accounts=rows))
        if progress:
            progress(start + len(rows))
    hold_no = 0
    batch: list[tuple[Any, ...]] = []
    for account, count in enumerate(per_account):
        for _ in range(count):
            batch.append(_hold_row(hold_no, account))
            hold_no += 1
            if len(batch) == _CHUNK:
                await storage.commit(BatchWrite(holds=batch))
                batch = []
                if progress:
                    progress(accounts + hold_no)
    if batch:
        await storage.commit(BatchWrite(holds=batch))
    await storage.close()


_PROBE = r"""
import asyncio, json, sys, time
from balance.bootstrap import shard_storage
from balance.config import Settings
from balance.engine.shard import ShardEngine

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

async def main():
    engine = ShardEngine(0, shard_storage(Settings.from_env(), 0), sweep_interval_s=3600)
    t0 = time.perf_counter()
    await engine.start()
    seconds = time.perf_counter() - t0
    out = {"ready_s": seconds, "accounts": len(engine.ledger.accounts), "holds": len(engine.ledger.holds),
           "rss": rss()}
    await engine.stop()
    return out

print(json.dumps(asyncio.run(main())))
"""


def _probe(env: dict[str, str]) -> dict[str, Any]:
    """A fresh process recovers the shard: time to ready and resident memory once ready."""
    import os

    completed = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**os.environ, **env, "BALANCE_SHARDS": "1"},
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"recovery probe failed: {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def run_recovery(backend: str, *, accounts: int, holds: int, work_dir: Path, progress: Any = None) -> BenchResult:
    """RSS of a recovered shard: empty, with ``accounts`` accounts, then with ``holds`` holds too.

    Per-account and per-hold bytes are the differences (the same whole-process resident memory
    an operator sees, fragmentation included)."""
    async with scratch_storage(backend, work_dir) as (storage, env):
        await storage.open()
        await storage.close()
        empty = await asyncio.to_thread(_probe, env)
        started = time.perf_counter()
        await fill(storage, accounts, 0, progress)
        only_accounts = await asyncio.to_thread(_probe, env)
        await fill(storage, accounts, holds, progress)
        fill_s = time.perf_counter() - started
        full = await asyncio.to_thread(_probe, env)
    assert full["accounts"] == accounts + 2 and full["holds"] == holds, full
    per_account = (only_accounts["rss"] - empty["rss"]) / accounts
    per_hold = (full["rss"] - only_accounts["rss"]) / holds if holds else 0.0
    return BenchResult(
        name="recovery", backend=backend, scenario=f"{accounts:,} accounts + {holds:,} holds",
        ops=accounts + holds, seconds=full["ready_s"], ops_per_s=(accounts + holds) / full["ready_s"],
        p50_ms=0.0, p95_ms=0.0, p99_ms=0.0,
        extra={
            "ready_s": full["ready_s"], "bytes_per_account": per_account, "bytes_per_hold": per_hold,
            "rss_ready_mb": full["rss"] / 2**20, "fill_s": fill_s,
        },
    )  # fmt: skip
