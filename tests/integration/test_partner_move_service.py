"""A partner with 200 children under holds, captures, releases and transfers from several
clients, moved to the other shard and back by the service while the load runs (SQLite files
and MariaDB); then a move interrupted by a crash after a step and finished at the next start.
Every acknowledged operation is there exactly once (its replay answers the first answer),
money is conserved, reserved is the sum of the pending holds, the history is complete."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from two_shards import Build, account

from balance.domain import commands as c
from balance.engine import partner_move
from balance.engine.partner_move import EXPORTED, MOVED_OUT, MoveRecord
from balance.engine.replies import Reply
from balance.service import BalanceService

CHILDREN = 200


def books(service: BalanceService) -> dict[str, int]:
    sums: dict[str, int] = {}
    for engine in service.engines:
        engine.ledger.check_invariants()  # each shard: reserved == pending holds, no negative available
        for acc in engine.ledger.accounts.values():
            sums[acc.currency] = sums.get(acc.currency, 0) + acc.balance
    return sums


async def tree(service: BalanceService) -> tuple[str, list[str]]:
    root = await account(service, 0)
    kids = []
    for i in range(CHILDREN):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        kids.append(json.loads(reply.body)["id"])
    seeds = await service.run_many([c.Credit(kid, f"seed-{kid}", 10_000) for kid in kids])
    assert {reply.status for reply in seeds} == {201}
    return root, kids


async def client(
    service: BalanceService, kids: list[str], n: int, stop: asyncio.Event, acked: list[tuple[c.Command, Reply]]
) -> None:
    rng = random.Random(n)
    held: list[tuple[str, str]] = []
    i = 0
    while not stop.is_set():
        i += 1
        kid = rng.choice(kids)
        op = f"c{n}-{i}"
        choice = rng.random()
        command: c.Command
        if choice < 0.35 or not held:
            command = c.PlaceHold(kid, op, rng.randint(1, 50), 3_600)
        elif choice < 0.55:
            command = c.CaptureHold(*held.pop(rng.randrange(len(held))), None)
        elif choice < 0.75:
            command = c.ReleaseHold(*held.pop(rng.randrange(len(held))))
        else:
            command = c.Transfer(op, kid, rng.choice(kids), rng.randint(1, 30), "EUR")
        reply = await service.execute(command)
        if reply.status < 300:
            acked.append((command, reply))
            if isinstance(command, c.PlaceHold):
                held.append((command.account_id, command.op_id))
        else:
            assert reply.status in (409, 422), reply.body  # never a 503: the switch is waited for
        await asyncio.sleep(0)


async def check_replays(service: BalanceService, acked: list[tuple[c.Command, Reply]]) -> None:
    for command, first in acked:
        again = await service.execute(command)
        assert (again.status, again.body, again.replayed) == (first.status, first.body, True), command


async def test_a_partner_moves_twice_under_load(build: Build) -> None:
    service = build()
    await service.start()
    root, kids = await tree(service)
    stop, acked = asyncio.Event(), []  # type: ignore[var-annotated]
    clients = [asyncio.create_task(client(service, kids, n, stop, acked)) for n in range(4)]
    await asyncio.sleep(0.3)
    there = await service.move_partner(root, 1)
    assert there["status"] == "done", there
    assert service.engine_for(kids[7]).shard == 1  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    back = await service.move_partner(root, 0)
    assert back["status"] == "done", back
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)
    assert len(acked) > 100 and there["holds"] and back["holds"]
    assert books(service) == {"EUR": 0}
    await check_replays(service, acked)
    # History: every acknowledged operation of one account listed once, across both shards.
    kid = kids[0]
    rows = [row for engine in service.engines for row in await engine.storage.history(kid, 10_000, None, None, None)]
    ops = [(row[3], row[4]) for row in rows if row[2] is not None]  # primary rows (op_key set)
    assert len(ops) == len(set(ops))
    for command, _ in acked:
        if command.account_id == kid and isinstance(command, c.PlaceHold):
            assert ("hold", command.op_id) in ops
    await service.stop()


@pytest.mark.parametrize(
    ("crash_after", "legacy", "lives_on"),
    [(EXPORTED, False, 0), (MOVED_OUT, False, 1), (EXPORTED, True, 1), (MOVED_OUT, True, 1)],
)
async def test_a_move_cut_by_a_crash_is_finished_at_the_next_start(
    build: Build, tmp_path: Path, crash_after: str, legacy: bool, lives_on: int
) -> None:
    """Cut after its move out, the next start finishes it from the record in the source shard's
    database; cut before, nothing was durable: the subtree serves on its shard as before. A
    record an earlier version left in ``<data dir>/moves/`` is resumed at start and removed."""
    service = build()
    service.moves_dir = tmp_path / "moves"
    await service.start()
    root, kids = await tree(service)
    held = await service.run_many([c.PlaceHold(kid, f"h-{kid}", 7, 3_600) for kid in kids])
    assert {reply.status for reply in held} == {201}
    save = service.save_move

    def crashing(record: MoveRecord) -> None:
        save(record)
        if legacy:  # what the earlier version wrote after each step
            (tmp_path / "moves").mkdir(exist_ok=True)
            record.save(tmp_path / "moves" / f"{record.move_id}.json")
        if record.step == crash_after:
            raise RuntimeError("crash")

    service.save_move = crashing
    with pytest.raises(RuntimeError):
        await service.move_partner(root, 1, "mv-crash")
    assert not list((tmp_path / "moves").glob("*.json")) or legacy
    for engine in service.engines:
        await engine.stop(checkpoint=False)
    service = build()
    service.moves_dir = tmp_path / "moves"
    await service.start()  # resumes the move
    assert not list((tmp_path / "moves").glob("*.json"))
    assert not await service.engines[0].storage.unfinished_moves()
    assert service.engine_for(kids[3]).shard == lives_on  # type: ignore[union-attr]
    assert books(service) == {"EUR": 0}
    for kid, first in zip(kids, held, strict=True):
        again = await service.execute(c.PlaceHold(kid, f"h-{kid}", 7, 3_600))
        assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert (await service.execute(c.CaptureHold(kids[5], f"h-{kids[5]}"))).status == 200
    for engine in service.engines:
        await engine.stop(checkpoint=False)
    service = build()  # and the placement is found again from the shards themselves
    await service.start()
    assert service.engine_for(kids[3]).shard == lives_on  # type: ignore[union-attr]
    assert books(service) == {"EUR": 0}
    await service.stop()


async def test_a_moves_record_in_many_parts_is_read_back_whole(build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record written with the move out holds the export in parts (here of 512 bytes); read back
    from the source shard after a crash, it is whole, and the next start finishes the move from
    it. Once done, the record says so and its parts are emptied."""
    monkeypatch.setattr(partner_move, "PART_BYTES", 512)  # (MariaDB: more parts than one bulk command takes)
    service = build()
    await service.start()
    root, kids = await tree(service)
    held = await service.run_many([c.PlaceHold(kid, f"h-{kid}", 7, 3_600) for kid in kids])
    assert {reply.status for reply in held} == {201}

    def crashing(record: MoveRecord) -> None:
        if record.step == MOVED_OUT:
            raise RuntimeError("crash")

    service.save_move = crashing
    with pytest.raises(RuntimeError):
        await service.move_partner(root, 1, "mv-parts")
    ((head, data),) = await service.engines[0].storage.unfinished_moves()
    stored = MoveRecord.from_stored(head, data)
    assert (stored.move_id, stored.step, stored.from_shard, stored.to_shard) == ("mv-parts", MOVED_OUT, 0, 1)
    assert stored.parts > 16 and len(stored.accounts) == CHILDREN + 1 and len(stored.holds) == CHILDREN
    leaving = service.engines[0].ledger.records[(root, "mvout:mv-parts")].body
    assert json.loads(leaving)["seq"] == stored.source_seq > 0  # the events' barrier, in the record too
    for engine in service.engines:
        await engine.stop(checkpoint=False)
    service = build()
    await service.start()  # finds the record in shard 0 and finishes the move
    assert not await service.engines[0].storage.unfinished_moves()
    assert service.engine_for(kids[7]).shard == 1  # type: ignore[union-attr]
    assert books(service) == {"EUR": 0}
    for kid, first in zip(kids, held, strict=True):
        again = await service.execute(c.PlaceHold(kid, f"h-{kid}", 7, 3_600))
        assert (again.status, again.body, again.replayed) == (201, first.body, True)
    await service.stop()
