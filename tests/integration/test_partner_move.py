"""A partner with its children and pending holds moved between two shard engines on SQLite
files and MariaDB, with a crash (engines stopped without a checkpoint, started again) after
each step: the move ends done, each shard's books balance, money is conserved, holds and first
answers arrived, the old shard keeps the history (move rows not listed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from two_shards import Build, Crash, account, restart, totals

from balance.domain import commands as c
from balance.domain.model import STATUS_ACTIVE, STATUS_MOVED
from balance.engine.partner_move import DONE, EXPORTED, FREEZING, MOVED_IN, MOVED_OUT, MoveRecord, run_move


@pytest.mark.parametrize("crash_after", [None, FREEZING, EXPORTED, MOVED_OUT, MOVED_IN])
async def test_a_partner_moves_with_a_crash_after_any_step(
    build: Build, tmp_path: Path, crash_after: str | None
) -> None:
    service = build()
    await service.start()
    root = await account(service, 0)
    kids = []
    for i in range(20):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 10, b'{"n":1}'))
        assert reply.status == 201, reply.body
        kids.append(json.loads(reply.body)["id"])
    assert all(service.engine_for(kid).shard == 0 for kid in kids)  # type: ignore[union-attr]
    first: dict[tuple[str, str], bytes] = {}
    for i, kid in enumerate(kids):
        credit = await service.execute(c.Credit(kid, f"cr-{i}", 1_000))
        hold = await service.execute(c.PlaceHold(kid, f"h-{i}", 100 + i, 3_600))
        assert (credit.status, hold.status) == (201, 201)
        first[(kid, f"cr-{i}")], first[(kid, f"h-{i}")] = credit.body, hold.body
    assert (await service.execute(c.CaptureHold(kids[0], "h-0", 50))).status == 200
    before = {kid: service.account_state(kid) for kid in kids}
    history_before = await service.engines[0].storage.history(kids[1], 50, None, None, None)
    path = tmp_path / "move.json"
    record = MoveRecord("mv-1", root, 0, 1)

    def save(saved: MoveRecord) -> None:
        saved.save(path)
        if saved.step == crash_after:
            raise Crash(saved.step)

    try:
        record = await run_move(service.engines[0], service.engines[1], record, save)
    except Crash:
        service = await restart(build, service)
        record = MoveRecord.load(path)
        record = await run_move(service.engines[0], service.engines[1], record, lambda r: r.save(path))
    assert record.step == DONE, record.error
    source, target = service.engines
    service = await restart(build, service)  # and everything is as durable as it looks
    source, target = service.engines
    assert totals(service) == {"EUR": 0}
    for kid in kids:
        old, new = source.ledger.accounts[kid], target.ledger.accounts[kid]
        assert (old.status, old.balance, old.reserved) == (STATUS_MOVED, 0, 0)
        was = before[kid]
        assert was is not None
        assert (new.status, new.balance, new.reserved, new.version, new.credit_limit) == (
            STATUS_ACTIVE, was[7], was[8], was[11], 10,
        )  # fmt: skip
    for i, kid in enumerate(kids[1:], start=1):
        hold = target.ledger.holds.find(kid, f"h-{i}")
        assert hold is not None and hold.status == "pending" and hold.placed_by == "admin"
    # Replays of ids used before the move answer first, on the new shard.
    for (kid, op), body in first.items():
        command: c.Command = (
            c.Credit(kid, op, 1_000) if op.startswith("cr") else c.PlaceHold(kid, op, 100 + int(op[2:]), 3_600)
        )
        replay = await target.execute(command)
        assert replay.replayed and replay.body == body, (kid, op)
    assert (await source.execute(c.Credit(kids[2], "x", 1))).status == 503  # moved: the old shard takes nothing
    assert (await target.execute(c.CaptureHold(kids[2], "h-2"))).status == 200
    assert (await target.execute(c.Credit(kids[2], "after", 5))).status == 201
    assert totals(service) == {"EUR": 0}
    # History stays where it was written; the move's rows are not listed on either shard.
    assert await source.storage.history(kids[1], 50, None, None, None) == history_before
    new_rows = await target.storage.history(kids[2], 50, None, None, None)
    assert [row[3] for row in new_rows] == ["credit", "capture"]
    for engine in service.engines:
        await engine.stop()


async def test_a_moves_export_reads_every_first_answer_of_its_accounts(build: Build) -> None:
    """``move_records``: every stored first answer of the accounts asked (refusals too), none of
    another account's; on SQLite read through the history table and the journal's tail after it."""
    service = build()
    await service.start()
    root = await account(service, 0)
    other = await account(service, 0)
    commands = [c.Credit(root if i % 3 else other, f"c{i}", 5) for i in range(2_600)]  # past HISTORY_SLICE_ROWS
    replies = {}
    for start in range(0, len(commands), 200):
        chunk = commands[start : start + 200]
        for command, reply in zip(chunk, await service.run_many(chunk), strict=True):
            replies[(command.account_id, f"op:{command.op_id}")] = reply
    refused = await service.execute(c.Debit(root, "too-much", 10**9))
    assert refused.status == 422
    storage = service.engines[0].storage
    rows = await storage.move_records([root])
    found = {(row[0], row[1]): (int(row[3]), bytes(row[4])) for row in rows}
    assert len(found) == len(rows)  # each once
    wanted = {key: (reply.status, reply.body) for key, reply in replies.items() if key[0] == root}
    wanted[(root, "op:too-much")] = (422, refused.body)
    assert {key: found[key] for key in wanted} == wanted
    assert all(key[0] == root for key in found)
    inner = getattr(storage, "inner", storage)
    if hasattr(inner, "path"):
        import sqlite3

        conn = sqlite3.connect(inner.path)
        history_seq = conn.execute("SELECT value FROM meta WHERE name = 'history_seq'").fetchone()[0]
        last = conn.execute("SELECT MAX(seq) FROM journal").fetchone()[0]
        conn.close()
        assert 0 < history_seq < last  # both parts were read
    await service.stop()
