"""What authority keeps in storage survives restarts, and older databases gain it at open
(both backends): who placed a hold, who froze an account, keys' ids, scopes and revocations."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncmy
from test_checkpoint import NEVER, ok, started

from balance.domain import authority as a
from balance.domain import commands as c
from balance.engine.shard import ShardEngine
from balance.keys import KeyRecord
from balance.storage.base import ShardStorage

T, P, U = "US-0-top", "US-0-gateway", "US-0-payer"
GATEWAY = a.Actor(P, a.PARTNER_DEFAULT, "key-p")
PAYER = a.Actor(U, a.PARTNER_DEFAULT, "key-u")


async def tree(engine: ShardEngine) -> None:
    await ok(engine, c.CreateAccount(T, None, "partner", "US", "USD", "t", 0, b"{}"))
    await ok(engine, c.CreateAccount(P, T, "partner", "US", "USD", "p", 0, b"{}"))
    await ok(engine, c.CreateAccount(U, P, "user", "US", "USD", "u", 0, b"{}"))
    await ok(engine, c.Credit(U, "seed", 10_000))


async def _raw(backend: Any, storage: ShardStorage, statements: list[str]) -> None:
    if backend.name == "sqlite":
        with sqlite3.connect(storage.path) as conn:  # type: ignore[attr-defined]
            for sql in statements:
                conn.execute(sql)
        return
    conn = await asyncmy.connect(**storage._connect_kwargs(autocommit=True))  # type: ignore[attr-defined]
    try:
        async with conn.cursor() as cur:
            for sql in statements:
                await cur.execute(sql)
    finally:
        conn.close()


async def test_who_placed_a_hold_survives_restart_from_the_journal_and_from_the_checkpoint(backend: Any) -> None:
    for interval in (NEVER, 0):  # the journal alone; the holds table (every batch checkpoints)
        engine = await started(backend.make(), checkpoint_interval_s=interval)
        if interval == NEVER:
            await tree(engine)
        await ok(engine, c.PlaceHold(U, f"h-{interval}", 100, 900, actor=GATEWAY))
        await engine.stop(checkpoint=False)
        again = await started(backend.make(), checkpoint_interval_s=NEVER)
        assert again.ledger.holds[U, f"h-{interval}"].placed_by == P
        refused = await again.execute(c.ReleaseHold(U, f"h-{interval}", actor=PAYER))
        assert refused.status == 403
        await ok(again, c.CaptureHold(U, f"h-{interval}", 1, actor=GATEWAY))
        await again.stop()
    third = await started(backend.make(), checkpoint_interval_s=NEVER)  # finished holds: read from storage
    assert third.ledger.holds.find(U, "h-0") is None
    assert (await third.execute(c.CaptureHold(U, "h-0", 1, actor=PAYER))).status == 403  # not the replay
    assert (await third.execute(c.CaptureHold(U, "h-0", 1, actor=GATEWAY))).replayed
    await third.stop()


async def test_who_froze_an_account_survives_a_restart(backend: Any) -> None:
    engine = await started(backend.make(), checkpoint_interval_s=NEVER)
    await tree(engine)
    await ok(engine, c.UpdateAccount(U, status="frozen"))  # the admin
    assert (await engine.execute(c.UpdateAccount(U, status="active", actor=GATEWAY))).status == 403
    await engine.stop()
    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    assert again.ledger.accounts[U].frozen_by == a.ADMIN
    assert (await again.execute(c.UpdateAccount(U, status="active", actor=GATEWAY))).status == 403
    await ok(again, c.UpdateAccount(U, status="active"))
    assert again.ledger.accounts[U].frozen_by is None
    await again.stop()


async def test_an_earlier_version_s_tables_gain_the_authority_columns_at_open(backend: Any) -> None:
    engine = await started(backend.make(), checkpoint_interval_s=0)
    await tree(engine)
    await ok(engine, c.PlaceHold(U, "old", 100, 900))
    await engine.stop()
    await _raw(backend, engine.storage, [
        "DELETE FROM api_keys",
        *(f"ALTER TABLE api_keys DROP COLUMN {col}" for col in ("key_id", "prefix", "scopes", "revoked_at", "client_id")),
        "ALTER TABLE holds DROP COLUMN placed_by",
        "ALTER TABLE accounts DROP COLUMN frozen_by",
        "ALTER TABLE journal DROP COLUMN placed_by",
        f"INSERT INTO api_keys (key_hash, account_id, created_at) VALUES ('{'a' * 64}', '{P}', 1)",
    ])  # fmt: skip
    again = await started(backend.make(), checkpoint_interval_s=NEVER)
    (row,) = await again.storage.load_keys()
    legacy = KeyRecord.from_row(row)
    assert (legacy.account_id, legacy.scopes, legacy.revoked_at) == (P, a.PARTNER_DEFAULT, None)  # no funds
    hold = again.ledger.holds[U, "old"]
    assert hold.placed_by is None  # placed before placers were recorded: the top of its tree finishes it
    assert (await again.execute(c.ReleaseHold(U, "old", actor=GATEWAY))).status == 403
    await ok(again, c.ReleaseHold(U, "old", actor=a.Actor(T, a.MOVE, "key-t")))
    await ok(again, c.CreateKey(U, "b" * 64, "key_new", "bk_new", a.READ, "cid", 5))
    await ok(again, c.RevokeKey(U, ("b" * 64, U, 5, "key_new", "bk_new", a.READ, 9, "cid")))
    await again.stop()
    third = await started(backend.make(), checkpoint_interval_s=NEVER)
    rows = {r[0]: r for r in await third.storage.load_keys()}
    assert rows["b" * 64] == ("b" * 64, U, 5, "key_new", "bk_new", a.READ, 9, "cid")
    await third.stop()
