"""What two MariaDB connections per shard could give (a measurement for the next step, not code
the service runs): batch N+1's journal rows are written on connection B while batch N commits on
A; N+1 upserts the shared hot account row only after N is durable, then XA PREPARE and XA COMMIT,
so commits stay in batch order. Compared with today's design: one connection, batches in turn.

    .venv/bin/python tools/xa_potential.py      # needs the MariaDB of BALANCE_TEST_MYSQL_URL
"""

import asyncio
import time
from typing import Any

from balance.bench.ceiling import JournalRows, _MysqlSender
from balance.bench.naive import mysql_connect, mysql_scratch_database, mysql_url

ROWS = 2000  # journal rows per batch
SECONDS = 6.0
HOT_ACCOUNT = (
    "INSERT INTO accounts (id,parent_id,kind,region,currency,name,status,balance,reserved,credit_limit,"
    "exhausted,version,created_at,updated_at,metadata) VALUES ('US-0-hot',NULL,'partner','US','USD','',"
    "'active',%d,0,0,0,%d,1,%d,'{}') ON DUPLICATE KEY UPDATE balance=VALUES(balance),"
    "version=VALUES(version),updated_at=VALUES(updated_at)"
)


async def one_connection(params: dict[str, Any], database: str) -> float:
    conn = await mysql_connect(params, database)
    sender, rows = _MysqlSender(conn, "bulk"), JournalRows(0)
    written, version, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        version += 1
        await sender.send(rows.take(ROWS))
        await conn.query(HOT_ACCOUNT % (version, version, version))
        await conn.commit()
        written += ROWS
    conn.close()
    return written / (time.perf_counter() - started)


async def two_connections_xa(params: dict[str, Any], database: str) -> float:
    conns = [await mysql_connect(params, database) for _ in range(2)]
    senders, rows = [_MysqlSender(conn, "bulk") for conn in conns], JournalRows(1)

    async def batch(number: int, version: int, before: asyncio.Future[None] | None) -> None:
        conn, xid = conns[number % 2], f"'b{number}'"
        await conn.query(f"XA START {xid}")
        await senders[number % 2].send(rows.take(ROWS))
        if before is not None:
            await before  # the shared row only once the previous batch is durable
        await conn.query(HOT_ACCOUNT % (version, version, version))
        await conn.query(f"XA END {xid}")
        await conn.query(f"XA PREPARE {xid}")
        await conn.query(f"XA COMMIT {xid}")

    written, number, started = 0, 0, time.perf_counter()
    previous: asyncio.Future[None] | None = None
    while time.perf_counter() - started < SECONDS:
        number += 1
        current = asyncio.ensure_future(batch(number, number, previous))
        if previous is not None:
            await previous
            written += ROWS
        previous = current
    if previous is not None:
        await previous
        written += ROWS
    for conn in conns:
        conn.close()
    return written / (time.perf_counter() - started)


async def main() -> None:
    url = mysql_url()
    for round_ in range(2):
        for name, measure in (("1 connection", one_connection), ("2 connections, XA", two_connections_xa)):
            async with mysql_scratch_database(url) as (params, database):
                rate = await measure(params, database)
                print(f"round {round_}: {name}: {rate:,.0f} journal rows/s (+ one hot account upsert per {ROWS})")


asyncio.run(main())
