"""What a commit costs per kind of row, through the real storage adapters (no engine).

    .venv/bin/python tools/row_cost.py [mariadb|sqlite] [rows per commit]

Commits, one after another, batches of ``rows`` journal rows alone, journal rows with a hold
insert each, journal rows with a hold update each (a capture: the row moves in the
``holds_by_status`` index), and journal rows with a short answer instead of ~700 bytes.
Prints the median commit time of each (the first 10 of 60 dropped). This is the measurement
that moved hold rows out of the per-operation path (BENCHMARKS.md, session 4).
"""

import os
import statistics
import sys
import tempfile
import time

import uvloop

from balance.storage import mariadb
from balance.storage.base import BatchWrite
from balance.storage.sqlite import SqliteShardStorage

T0 = 1_790_000_000_000_000
ANSWER = b'{"x":"' + b"a" * 700 + b'"}'
ACCOUNT = ("US-0-0000000000000001", None, "user", "US", "USD", "", "active", 10**12, 0, 0, False, 2, T0, T0, b"{}")
_seq = 0


def journal(n: int, tag: str, result: bytes = ANSWER) -> list[tuple]:
    global _seq
    rows = []
    for i in range(n):
        _seq += 1
        rows.append((
            _seq, ACCOUNT[0], f"hold:{tag}-{i}", "hold", f"{tag}-{i}", 201, "", 123456789, 5, "USD", None,
            f"{tag}-{i}", 10**9, 5 * i, _seq, T0 + _seq, "", b"{}", result, T0 + 10**9, None,
        ))  # fmt: skip
    return rows


def holds(n: int, tag: str, status: str = "pending") -> list[tuple]:
    return [(ACCOUNT[0], f"{tag}-{i}", 5, 0, "USD", status, None, T0 + 10**9, T0, T0, "", b"{}") for i in range(n)]


async def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "mariadb"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    if backend == "mariadb":
        os.system("mariadb -uroot -e 'DROP DATABASE IF EXISTS row_cost_s0'")
        storage = mariadb.from_url("mysql://root@127.0.0.1:3306/row_cost", 0)
    else:
        storage = SqliteShardStorage(tempfile.mkdtemp() + "/row_cost.db")
    await storage.open()
    kinds = ("journal", "journal + hold insert", "journal + hold update", "journal, short answer")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_no in range(60):
        for k, kind in enumerate(kinds):
            tag = f"k{k}r{round_no}"
            if kind == "journal":
                batch = BatchWrite(journal=journal(n, tag), accounts=[ACCOUNT])
            elif kind == "journal, short answer":
                batch = BatchWrite(journal=journal(n, tag, b'{"s":1}'), accounts=[ACCOUNT])
            elif kind == "journal + hold insert":
                batch = BatchWrite(journal=journal(n, tag), holds=holds(n, tag), accounts=[ACCOUNT])
            else:  # the holds go in first (not timed), then are updated as captured
                await storage.commit(BatchWrite(holds=holds(n, tag)))
                batch = BatchWrite(journal=journal(n, tag), holds=holds(n, tag, "captured"), accounts=[ACCOUNT])
            storage.prepare(batch)
            started = time.perf_counter()
            await storage.commit(batch)
            times[kind].append(time.perf_counter() - started)
    for kind in kinds:
        print(f"{backend} {n} rows per commit, {kind:24s} median {statistics.median(times[kind][10:]) * 1e3:.2f} ms")
    await storage.close()
    if backend == "mariadb":
        os.system("mariadb -uroot -e 'DROP DATABASE IF EXISTS row_cost_s0'")


uvloop.run(main())
