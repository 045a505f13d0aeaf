"""What the fence guard costs a commit, interleaved: small batches (one journal row and its
account) committed one after another on one shard's storage, without and with the guard,
in alternating rounds so that the machine's drift falls on both alike.

    .venv/bin/python tools/fence_cost.py mariadb|sqlite [rounds] [commits]

Prints each round, the medians of the per-commit times and the median of each round's
on/off ratio (the pair run back to back: the least sensitive to a loaded machine's drift) (the guard is one more statement
in the batch's packet on MariaDB, one SELECT in the transaction on SQLite).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from balance.storage.base import BatchWrite, ShardStorage
from balance.storage.mariadb import from_url
from balance.storage.sqlite import SqliteShardStorage

URL = "mysql://root@127.0.0.1:3306/balance_fence_cost"
T0 = 1_700_000_000_000_000


def batch(seq: int) -> BatchWrite:
    journal = (
        seq, "acc-1", f"op:{seq}", "credit", f"op-{seq}", 201, "ok", 1, 1, "EUR", None, None, seq, 0, seq + 1, T0, "",
        b"{}", b"", None, None, None,
    )  # fmt: skip
    account = (
        "acc-1", None, "user", "EU", "EUR", "a", "active", seq, 0, 0, False, seq + 1, T0, T0, b"{}", None,
    )  # fmt: skip
    return BatchWrite(journal=[journal], accounts=[account])


async def run(backend: str, rounds: int, commits: int) -> None:
    work = Path(tempfile.mkdtemp())
    name = f"fc{uuid.uuid4().hex[:6]}"
    times: dict[bool, list[float]] = {False: [], True: []}
    seq = 0
    for round_number in range(rounds):
        for guarded in (False, True):
            storage: ShardStorage = (
                SqliteShardStorage(work / "shard.db") if backend == "sqlite" else from_url(f"{URL}_{name}", 0)
            )
            if guarded:
                storage.fence_with(1)
            await storage.open()
            began = time.perf_counter()
            for _ in range(commits):
                seq += 1
                await storage.commit(batch(seq))
            per_commit = (time.perf_counter() - began) / commits * 1e6
            times[guarded].append(per_commit)
            print(
                f"round {round_number + 1} guard={'on ' if guarded else 'off'}: {per_commit:,.0f} us/commit", flush=True
            )
            await storage.close()
    if backend != "sqlite":
        import asyncmy

        from balance.storage.mariadb_url import connect_kwargs

        conn = await asyncmy.connect(**connect_kwargs(URL))
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{from_url(f'{URL}_{name}', 0).database}`")
        await conn.ensure_closed()
    off, on = statistics.median(times[False]), statistics.median(times[True])
    paired = statistics.median(b / a for a, b in zip(times[False], times[True], strict=True))
    print(
        f"median: off {off:,.0f} us, on {on:,.0f} us per commit: {on / off:.3f}x; median of the rounds' ratios {paired:.3f}x"
    )


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "mariadb"
    asyncio.run(
        run(backend, int(sys.argv[2]) if len(sys.argv) > 2 else 5, int(sys.argv[3]) if len(sys.argv) > 3 else 500)
    )
