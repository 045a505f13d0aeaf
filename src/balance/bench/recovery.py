"""Memory per account and per pending hold, and the time from start to ready, at scale.

The shard database is filled directly (``shard_loader``: the rows a checkpoint leaves, not
the measured path), then fresh processes run the real recovery code: resident memory with
no account, with the accounts, and with the holds too; the last one's ``ShardEngine.start()``
to ready is the start-to-ready time.
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
from balance.bench.shard_loader import load

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
        await load(storage, accounts, 0, progress=progress)
        only_accounts = await asyncio.to_thread(_probe, env)
        await load(storage, accounts, holds, progress=progress)
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
