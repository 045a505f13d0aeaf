"""How long an earlier version's holds table takes to be keyed anew at open (MariaDB).

    .venv/bin/python tools/mariadb_rekey_time.py ACCOUNTS HOLDS

Fills a scratch shard database with ``HOLDS`` pending holds on ``ACCOUNTS`` accounts
(``bench/shard_loader.py``), gives its holds table the earlier version's layout (keyed by
``(account_id, id)`` with ``holds_by_status`` and ``holds_by_expiry``), then times the
storage's ``open()``, which re-keys it (``storage/mariadb.py``: one ``ALTER TABLE``), and a
second ``open()`` (nothing left to do). The upgrade's cost, not a steady-state figure: the
shard serves nothing until its ``open()`` returns. MariaDB from ``BALANCE_DB_URL`` or the
machine's server; the database is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncmy

from balance.bench import ours
from balance.bench.shard_loader import load
from balance.storage.mariadb import MariaDbShardStorage

OLD_LAYOUT = (
    "ALTER TABLE holds DROP PRIMARY KEY, ADD PRIMARY KEY (account_id, id),"
    " ADD INDEX holds_by_status (status, account_id, id),"
    " ADD INDEX holds_by_expiry (status, expires_at, account_id, id)"
)


async def main(accounts: int, holds: int) -> None:
    with tempfile.TemporaryDirectory() as work_dir:
        async with ours.scratch_storage("mariadb", Path(work_dir)) as (storage, _):
            assert isinstance(storage, MariaDbShardStorage)
            seconds = await load(storage, accounts, holds)
            print(f"loaded {accounts:,} accounts and {holds:,} holds in {seconds:.1f} s", flush=True)
            conn = await asyncmy.connect(**storage.connection_kwargs())
            try:
                async with conn.cursor() as cur:
                    started = time.perf_counter()
                    await cur.execute(OLD_LAYOUT)
                    print(f"the earlier layout made in {time.perf_counter() - started:.1f} s", flush=True)
            finally:
                conn.close()
            for what in ("open(), re-keying the holds table", "open() again, nothing to re-key"):
                started = time.perf_counter()
                await storage.open()
                print(f"{what}: {time.perf_counter() - started:.1f} s", flush=True)
                await storage.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
