"""Start-to-ready of one SQLite shard with N accounts and N pending holds (filled once, reused).

    .venv/bin/python tools/profile_recovery.py 1000000          # seconds to ready
    .venv/bin/python tools/profile_recovery.py 200000 profile   # and a cProfile of the recovery

The bench's ``--scenario recovery`` measures the same in fresh processes with memory; this is
the quick side-by-side tool behind the recovery decisions in BENCHMARKS.md.
"""

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from balance.bench.recovery import fill
from balance.engine.shard import ShardEngine
from balance.storage.sqlite import SqliteShardStorage

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
PATH = Path(tempfile.gettempdir()) / f"balance-recovery-{COUNT}.db"


async def main() -> None:
    if not PATH.exists():
        await fill(SqliteShardStorage(PATH), COUNT, 0)
        await fill(SqliteShardStorage(PATH), COUNT, COUNT)
    engine = ShardEngine(0, SqliteShardStorage(PATH), sweep_interval_s=3600)
    profile = cProfile.Profile() if len(sys.argv) > 2 else None
    started = time.perf_counter()
    if profile:
        profile.enable()
    await engine.start()
    if profile:
        profile.disable()
    print(f"ready in {time.perf_counter() - started:.2f} s: {len(engine.ledger.accounts)} accounts, "
          f"{len(engine.ledger.holds)} holds")  # fmt: skip
    await engine.stop()
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)


asyncio.run(main())
