"""Balances at the 2^62 limit and system accounts past 2^63, on both backends (issue 14, item 4).

Non-system accounts stay within +-2^62 (beyond: 422 ``limit_exceeded``); the funding and
settlement accounts take the other side of every account and have no bound, so they are stored
exactly and read back exactly after a restart, and nobody's honest operation fails because of
them.
"""

from __future__ import annotations

import json
from typing import Any

from balance.domain import commands as c
from balance.domain.ids import system_account_id
from balance.domain.model import KIND_FUNDING, KIND_SETTLEMENT
from balance.engine.shard import ShardEngine
from balance.storage.mariadb import MariaDbShardStorage

LIMIT = 2**62
PUSHERS = 5  # accounts at the limit: 5 * 2^62 > 2^63 on the funding account


def _raise(exc: BaseException) -> None:
    raise exc


async def _engine(backend: Any) -> ShardEngine:
    engine = ShardEngine(0, backend.make(), sweep_interval_s=3600, on_fatal=_raise)
    await engine.start()
    return engine


async def _open(engine: ShardEngine, name: str) -> str:
    account_id = f"EU-0-{name:0>16}"
    reply = await engine.execute(c.CreateAccount(account_id, None, "user", "EU", "EUR", name, 0, b"{}"))
    assert reply.status == 201, reply.body
    return account_id


def _balance(engine: ShardEngine, account_id: str) -> int:
    return engine.ledger.accounts[account_id].balance


async def test_balances_stop_at_2_62_and_system_accounts_go_past_2_63_and_back(backend: Any) -> None:
    engine = await _engine(backend)
    edge = await _open(engine, "edge")
    assert (await engine.execute(c.Credit(edge, "c1", LIMIT - 1))).status == 201
    assert (await engine.execute(c.Credit(edge, "c2", 1))).status == 201  # exactly 2^62
    over = await engine.execute(c.Credit(edge, "c3", 1))  # 2^62 + 1
    assert (over.status, json.loads(over.body)["code"]) == (422, "limit_exceeded")
    assert _balance(engine, edge) == LIMIT
    pushers = [await _open(engine, f"p{i}") for i in range(PUSHERS)]
    for account_id in pushers:
        assert (await engine.execute(c.Credit(account_id, "fill", LIMIT))).status == 201
    funding = system_account_id(0, "EUR", KIND_FUNDING)
    expected = -(PUSHERS + 1) * LIMIT
    assert _balance(engine, funding) == expected < -(2**63)
    honest = await _open(engine, "honest")
    assert (await engine.execute(c.Credit(honest, "h1", 500))).status == 201
    for account_id in pushers:  # and out again: the settlement account past 2^63 too
        assert (await engine.execute(c.Debit(account_id, "empty", LIMIT))).status == 201
    assert (await engine.execute(c.Debit(honest, "h2", 200))).status == 201
    engine.ledger.check_invariants()
    await engine.stop(checkpoint=False)  # the journal, not the checkpoint, has the last rows

    restarted = await _engine(backend)
    settlement = system_account_id(0, "EUR", KIND_SETTLEMENT)
    assert _balance(restarted, funding) == expected - 500
    assert _balance(restarted, settlement) == PUSHERS * LIMIT + 200
    assert _balance(restarted, edge) == LIMIT and _balance(restarted, honest) == 300
    assert (await restarted.execute(c.Credit(honest, "h3", 1))).status == 201  # honest work goes on
    again = await restarted.execute(c.Credit(edge, "c3", 1))  # the refusal was recorded
    assert (again.status, again.replayed) == (422, True)
    restarted.ledger.check_invariants()
    await restarted.stop()  # a clean stop: the accounts table has the big balances now

    third = await _engine(backend)
    assert _balance(third, funding) == expected - 501
    assert _balance(third, settlement) == PUSHERS * LIMIT + 200
    third.ledger.check_invariants()
    await third.stop()


async def test_a_database_of_an_earlier_version_gets_its_balance_column_widened(
    mariadb_storage: MariaDbShardStorage,
) -> None:
    storage = mariadb_storage
    async with storage._pool.acquire() as conn, conn.cursor() as cur:  # type: ignore[union-attr]
        await cur.execute("ALTER TABLE accounts MODIFY balance BIGINT NOT NULL")
        await cur.execute("ALTER TABLE journal MODIFY op_key VARCHAR(80) NULL")
    await storage.close()

    await storage.open()

    async with storage._pool.acquire() as conn, conn.cursor() as cur:  # type: ignore[union-attr]
        await cur.execute(
            "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
            " AND COLUMN_NAME IN ('balance', 'op_key', 'op_id') ORDER BY TABLE_NAME, COLUMN_NAME",
            (storage.database,),
        )
        types = {(table, column): kind for table, column, kind in await cur.fetchall()}
    assert types[("accounts", "balance")] == "decimal(39,0)"
    assert types[("journal", "op_key")] == "varchar(160)"
    assert types[("transfers_pending", "op_id")] == "varchar(80)"
