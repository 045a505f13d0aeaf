"""What a checkpoint round's rows cost SQLite per commit, by table layout (issue 18, session 15).

    .venv/bin/python tools/round_row_cost.py [accounts] [holds already in the table]

A round writes a slice of its rows with each commit, in key order (``domain.round_order``).
Each page a commit dirties goes to the WAL whole, so what a slice costs is the pages it lands
on. This times commits of 16 rows, synced as the service syncs them (WAL, synchronous=FULL),
in a scratch database file:

- holds, upserted as a round writes them (new pending holds of random accounts, placed over
  2 s with expiries spread over those 2 s, written a slice per commit in the table's key
  order): keyed by (account_id, id) with ``holds_by_status`` and ``holds_by_expiry`` (before
  session 15), with ``holds_by_expiry`` only (sessions 15-18), and keyed by (expires_at,
  account_id, id) WITHOUT ROWID with no index (since session 19);
- accounts, 63% of them per round in id order (what a round of ``pending-10k`` rewrites), in
  a table by rowid (accounts made in random id order: their pages do not follow the ids) and
  in a table by id (WITHOUT ROWID, the layout since session 15).

Prints the mean and median commit time of each (2,000 commits each).
"""

from __future__ import annotations

import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from balance.storage import schema
from balance.storage.sqlite import _insert_sql, _sqlite_type, connect

SLICE = 16
ROUND_HOLDS = 10_000
NOW = 1_800_000_000_000
STATUS = ("holds_by_status", "status, account_id, id")
EXPIRY = ("holds_by_expiry", "status, expires_at, account_id, id")


def hold_row(account_id: str, hold_id: str, expires_at: int) -> tuple[object, ...]:
    return (account_id, hold_id, 100, 0, "EUR", "pending", None, expires_at, NOW, NOW, "", b"{}", None)


def account_row(account_id: str, version: int) -> tuple[object, ...]:
    return (account_id, None, "user", "EU", "EUR", "", "active", 10**6 - version, version, 0, False, version,
            NOW, NOW, b"{}", None)  # fmt: skip


def fresh(path: Path) -> sqlite3.Connection:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return connect(path)


def timed_commits(
    conn: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    slices: list[list[tuple]],
    upsert: bool = True,  # type: ignore[type-arg]
) -> str:
    conn.execute("PRAGMA wal_autocheckpoint=0")
    times = []
    for n, rows in enumerate(slices):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_insert_sql(table, columns, len(rows), upsert), [value for row in rows for value in row])
        conn.execute("COMMIT")
        times.append((time.perf_counter() - started) * 1000)
        if n % 500 == 499:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # (as the copier keeps the WAL short)
    return f"mean {statistics.mean(times):.3f} ms, median {statistics.median(times):.3f} ms"


def holds(path: Path, accounts: list[str], preload: int, indexes: list[tuple[str, str]], by_expiry: bool) -> str:
    conn = fresh(path)
    ddl = _sqlite_type(schema.TABLES["holds"])
    if by_expiry:
        conn.execute(f"CREATE TABLE holds ({ddl}) WITHOUT ROWID")
    else:
        conn.execute(
            f"CREATE TABLE holds ({ddl.replace('PRIMARY KEY (expires_at, account_id, id)', 'PRIMARY KEY (account_id, id)')})"
        )
    for name, columns in indexes:
        conn.execute(f"CREATE INDEX {name} ON holds ({columns})")
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO holds VALUES ({','.join('?' * len(schema.HOLD_COLUMNS))})",
        [hold_row(random.choice(accounts), f"pre-{n:09d}", NOW + 900_000 + n) for n in range(preload)],
    )
    conn.execute("COMMIT")
    # A round: 10,000 holds placed over 2 s (its expiries spread over those 2 s), written in
    # the table's key order a slice per commit.
    key = (lambda row: (row[7], row[0], row[1])) if by_expiry else (lambda row: (row[0], row[1]))
    slices = []
    for first in range(0, 2000, ROUND_HOLDS // SLICE):
        expiry = NOW + 1_000_000 + first * 10
        placed = sorted(
            (
                hold_row(random.choice(accounts), f"r-{first:07d}-{k:05d}", expiry + random.randrange(2000))
                for k in range(ROUND_HOLDS)
            ),
            key=key,
        )
        slices += [placed[start : start + SLICE] for start in range(0, ROUND_HOLDS, SLICE)]
    slices = slices[:2000]
    try:
        # (the upsert's conflict target is today's key: the earlier layouts insert, new rows all)
        return timed_commits(conn, "holds", schema.HOLD_COLUMNS, slices, upsert=by_expiry)
    finally:
        conn.close()


def account_rounds(path: Path, accounts: list[str], clustered: bool) -> str:
    conn = fresh(path)
    conn.execute(
        f"CREATE TABLE accounts ({_sqlite_type(schema.TABLES['accounts'])}){' WITHOUT ROWID' if clustered else ''}"
    )
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO accounts VALUES ({','.join('?' * 16)})", [account_row(a, 0) for a in accounts])
    conn.execute("COMMIT")
    slices, version = [], 0
    while len(slices) < 2000:  # rounds of 63% of the accounts, each in id order
        written = sorted(random.sample(accounts, int(len(accounts) * 0.63)))
        for start in range(0, len(written), SLICE):
            version += 1
            slices.append([account_row(a, version) for a in written[start : start + SLICE]])
    try:
        return timed_commits(conn, "accounts", schema.ACCOUNT_COLUMNS, slices[:2000])
    finally:
        conn.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    preload = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    random.seed(1)
    accounts = [f"US-0-{secrets.token_hex(8)}" for _ in range(count)]  # made in random id order
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "round.db"
        print(f"{SLICE} rows per commit; {count:,} accounts, {preload:,} holds in the table; {os.cpu_count()} CPUs")
        for label, indexes, by_expiry in (
            ("holds by (account, id), +status +expiry", [STATUS, EXPIRY], False),
            ("holds by (account, id), +expiry (s15-18)", [EXPIRY], False),
            ("holds by (expires_at, account, id) (now)", [], True),
        ):
            print(f"{label:42s} {holds(path, accounts, preload, indexes, by_expiry)}")
        for label, clustered in (("accounts by rowid (before)", False), ("accounts by id, WITHOUT ROWID (now)", True)):
            print(f"{label:42s} {account_rounds(path, accounts, clustered)}")


if __name__ == "__main__":
    main()
