"""A partner's arrival in parts (``MoveIn.part``: the root alone, then parts of a few accounts,
each one commit), on SQLite files and MariaDB, cut by a crash between two parts: after the
restart (whose own resume cuts the arrival differently, in parts of 1,000) the move ends done,
each shard's books balance, every account lives on the target once with its balance, reserved
and version, holds naming accounts of other parts are marked where they live, and first
answers replay. Without the later parts' idempotency (what arrived is left out) the parts sent
again would be refused (or the transit account charged twice): the move would never end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from two_shards import Build, Crash, account, restart, totals

from balance.domain import commands as c
from balance.domain.model import STATUS_ACTIVE, STATUS_MOVED
from balance.engine.partner_move import (
    MOVED_OUT,
    ROLLED_BACK,
    MoveRecord,
    move_in_from_wire,
    move_in_wire,
    run_move,
)
from balance.service import BalanceService


async def subtree(service: BalanceService) -> tuple[str, list[str], dict[tuple[str, str], bytes]]:
    root = await account(service, 0)
    kids: list[str] = []
    for i in range(10):
        reply = await service.create_account(c.CreateAccount("", root, "user", "EU", "EUR", f"k{i}", 0, b"{}"))
        assert reply.status == 201, reply.body
        kids.append(json.loads(reply.body)["id"])
    for i in range(3):  # grandchildren: their parent arrives in an earlier part
        reply = await service.create_account(c.CreateAccount("", kids[0], "user", "EU", "EUR", f"g{i}", 0, b"{}"))
        assert reply.status == 201, reply.body
        kids.append(json.loads(reply.body)["id"])
    first: dict[tuple[str, str], bytes] = {}
    for i, kid in enumerate(kids):
        credit = await service.execute(c.Credit(kid, f"cr-{i}", 1_000 + i))
        # Each hold names an account of another part (the last kid names the first).
        hold = await service.execute(c.PlaceHold(kid, f"h-{i}", 10 + i, 3_600, kids[(i + 5) % len(kids)]))
        assert (credit.status, hold.status) == (201, 201), (credit.body, hold.body)
        first[(kid, f"cr-{i}")], first[(kid, f"h-{i}")] = credit.body, hold.body
    return root, kids, first


@pytest.mark.parametrize("crash_after_parts", [1, 2, 3])
async def test_a_crash_between_parts_of_the_arrival_ends_done(
    build: Build, tmp_path: Path, crash_after_parts: int
) -> None:
    service = build()
    await service.start()
    root, kids, first = await subtree(service)
    before = {kid: service.account_state(kid) for kid in kids}
    seen: list[int] = []

    def save(saved: MoveRecord) -> None:
        if saved.step == MOVED_OUT and saved.arrived:
            seen.append(saved.arrived)
            if saved.arrived == crash_after_parts:
                raise Crash(saved.arrived)

    record = MoveRecord("mv-parts", root, 0, 1)
    with pytest.raises(Crash):  # parts of 4 accounts: the root, then 4 + 4 + 4 + 1
        await run_move(service.engines[0], service.engines[1], record, save, part_accounts=4)
    assert seen == list(range(1, crash_after_parts + 1))
    service = await asyncio.wait_for(restart(build, service), 60)
    assert await service.engines[0].storage.unfinished_moves() == []  # resumed at start, done
    again = await asyncio.wait_for(service.resume_moves(), 60)
    assert again == []
    assert service.engine_for(root).shard == 1  # type: ignore[union-attr]
    service = await restart(build, service)  # and everything is as durable as it looks
    source, target = service.engines
    assert totals(service) == {"EUR": 0}
    for kid in [root, *kids]:
        old, new = source.ledger.accounts[kid], target.ledger.accounts[kid]
        assert (old.status, old.balance, old.reserved) == (STATUS_MOVED, 0, 0)
        if kid == root:
            continue
        was = before[kid]
        assert was is not None
        assert (new.status, new.balance, new.reserved, new.version) == (STATUS_ACTIVE, was[7], was[8], was[11])
    for i, kid in enumerate(kids):  # every hold arrived pending once, marked on the account it names
        hold = target.ledger.holds.find(kid, f"h-{i}")
        assert hold is not None and hold.status == "pending"
        named = kids[(i + 5) % len(kids)]
        assert f"{kid}:h-{i}" in target.ledger.inbound_holds.get(named, ())
        assert named not in source.ledger.inbound_holds
    for (kid, op), body in first.items():  # first answers replay on the new shard
        i = kids.index(kid)
        command: c.Command = (
            c.Credit(kid, op, 1_000 + i)
            if op.startswith("cr")
            else c.PlaceHold(kid, op, 10 + i, 3_600, kids[(i + 5) % len(kids)])
        )
        replay = await service.execute(command)
        assert replay.replayed and replay.body == body, (kid, op)
    named = kids[5]  # a named account cannot close while the hold naming it is pending
    assert (await service.execute(c.CaptureHold(kids[0], "h-0"))).status == 200
    assert totals(service) == {"EUR": 0}
    assert target.ledger.accounts[named].balance == before[named][7] + 10  # type: ignore[index]
    await service.stop()


async def test_a_refused_arrival_comes_back_in_parts(build: Build) -> None:
    """The target already has a live account of the subtree: the root's part is refused (its
    check covers the later parts' accounts), nothing arrives, and the subtree comes back onto
    the source in parts: every account live there again with its balance, reserved and holds."""
    service = build()
    await service.start()
    root, kids, first = await subtree(service)
    source, target = service.engines
    before = {kid: source.account_state(kid) for kid in [root, *kids]}
    squatter = before[kids[7]]  # the same id made to live on the target (a real command there)
    assert squatter is not None
    made = await target.execute(c.MoveIn("other", kids[7], (squatter,), (), ()))
    assert made.status == 200, made.body
    target_transit = {a.id: a.balance for a in target.ledger.accounts.values() if a.is_system}
    source_system = {a.id: a.balance for a in source.ledger.accounts.values() if a.is_system}
    moving = run_move(source, target, MoveRecord("mv-refused", root, 0, 1), lambda r: None, part_accounts=3)
    record = await asyncio.wait_for(moving, 30)  # (a later part refused would be sent again and again)
    assert record.step == ROLLED_BACK and "refused" in record.error, record.error
    source.ledger.check_invariants()
    target.ledger.check_invariants()
    assert {a.id: a.balance for a in target.ledger.accounts.values() if a.is_system} == target_transit
    # The source's transit account gave every balance back (its system accounts as before).
    after = {a.id: a.balance for a in source.ledger.accounts.values() if a.is_system}
    assert after == {**source_system, "SYS-0-transit-EUR": 0}
    for kid in [root, *kids]:
        assert source.account_state(kid) == before[kid], kid
        assert source.ledger.moving.get(kid) is None
    for i, kid in enumerate(kids):
        hold = source.ledger.holds.find(kid, f"h-{i}")
        assert hold is not None and hold.status == "pending"
    assert (await service.execute(c.Credit(kids[3], "after", 5))).status == 201
    assert await source.storage.unfinished_moves() == []
    await service.stop()


def test_a_part_of_an_arrival_crosses_between_nodes_as_it_is() -> None:
    part = c.MoveIn(
        "mv", "EU-0-root", (), (), (("EU-0-a", "op:x", 7, 201, b'{"a":1}'),), "in", 0, 42, 3, ("EU-0-b", "EU-0-c")
    )
    again = move_in_from_wire(move_in_wire(part))
    assert (again.part, again.later, again.records, again.source_seq) == (3, part.later, part.records, 42)
