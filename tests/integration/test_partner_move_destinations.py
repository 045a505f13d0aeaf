"""A partner whose subtree is involved in holds naming a destination, moved by the service
between two shards (SQLite files and MariaDB): its payers hold money for merchants of other
partners on both shards and for its own merchant, and buyers of other partners on both shards
hold money for its merchants. After the move (and after a crash at each step of it) every hold
is captured, released or expired: each capture pays its destination once, where it lives now;
each shard's books balance (transit included), reserved equals the pending holds, money is
conserved, replays answer first; a merchant named by pending holds cannot be closed until they
are settled. Then the same with captures sent while the move runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from two_shards import Build, account, check_books, no_pending, totals

from balance.domain import commands as c
from balance.domain.ledger import INBOUND_HOLD
from balance.engine.partner_move import EXPORTED, MOVED_IN, MOVED_OUT, MoveRecord
from balance.engine.replies import Reply
from balance.service import BalanceService

PAYERS = 6
SEED = 10_000


async def child(service: BalanceService, parent: str, name: str) -> str:
    reply = await service.create_account(c.CreateAccount("", parent, "user", "EU", "EUR", name, 0, b"{}"))
    assert reply.status == 201, reply.body
    return str(json.loads(reply.body)["id"])


class Scene:
    """The moving partner (shard 0) with payers and merchants; a gateway on each shard with a
    buyer and a shop; every hold placed, and what each capture paid to whom."""

    def __init__(self) -> None:
        self.holds: list[tuple[str, str, str, int]] = []  # (account, hold id, destination, amount)
        self.paid: dict[str, int] = {}
        self.captured: list[tuple[c.Command, Reply]] = []
        self.settled: set[tuple[str, str]] = set()

    async def build(self, service: BalanceService) -> None:
        self.partner = await account(service, 0)
        gateway0, gateway1 = await account(service, 0), await account(service, 1)
        self.payers = [await child(service, self.partner, f"payer{i}") for i in range(PAYERS)]
        self.merchant = await child(service, self.partner, "merchant")
        self.idle = await child(service, self.partner, "idle merchant")  # named by holds never captured
        self.buyers = [await child(service, gateway0, "buyer0"), await child(service, gateway1, "buyer1")]
        self.shops = [await child(service, gateway0, "shop0"), await child(service, gateway1, "shop1")]
        credits = [c.Credit(a, f"seed-{a}", SEED) for a in (*self.payers, *self.buyers)]
        assert {r.status for r in await service.run_many(credits)} == {201}
        for i, payer in enumerate(self.payers):  # (a): the same shard, the target's, its own subtree
            for j, destination in enumerate((*self.shops, self.merchant)):
                await self.hold(service, payer, f"a{i}-{j}", destination, 10 + i + j, 3_600 if i % 3 else 5)
        for i, buyer in enumerate(self.buyers):  # (b): from the source shard and from the target
            for k in range(3):
                await self.hold(service, buyer, f"b{i}-{k}", self.merchant, 20 + k, 3_600 if k else 5)
            await self.hold(service, buyer, f"idle{i}", self.idle, 5, 3_600)

    async def hold(
        self, service: BalanceService, account_id: str, hold_id: str, destination: str, amount: int, expires_in_s: int
    ) -> None:
        reply = await service.execute(c.PlaceHold(account_id, hold_id, amount, expires_in_s, destination))
        assert reply.status == 201, reply.body
        self.holds.append((account_id, hold_id, destination, amount))

    async def capture(self, service: BalanceService, account_id: str, hold_id: str, amount: int | None) -> None:
        command = c.CaptureHold(account_id, hold_id, amount)
        assert (account_id, hold_id) not in self.settled
        self.settled.add((account_id, hold_id))
        reply = await service.execute(command)
        assert reply.status == 200, reply.body
        body = json.loads(reply.body)["hold"]
        self.paid[body["destination_account_id"]] = (
            self.paid.get(body["destination_account_id"], 0) + (body["captured_amount"])
        )
        self.captured.append((command, reply))

    async def settle(self, service: BalanceService, clock_step: object) -> None:
        """Capture (some in part), release, and let expire (the short ones) every hold but the idle ones."""
        for n, (account_id, hold_id, _, amount) in enumerate(self.holds):
            if hold_id.startswith("idle") or self.short(hold_id) or (account_id, hold_id) in self.settled:
                continue
            if n % 4 == 3:
                self.settled.add((account_id, hold_id))
                assert (await service.execute(c.ReleaseHold(account_id, hold_id))).status == 200
            else:
                await self.capture(service, account_id, hold_id, amount - 1 if n % 4 == 1 else None)

    @staticmethod
    def short(hold_id: str) -> bool:
        """Placed to expire after 5 s."""
        if hold_id.startswith("a"):
            return int(hold_id[1 : hold_id.index("-")]) % 3 == 0
        return hold_id.startswith("b") and hold_id.endswith("-0")


def balance(service: BalanceService, account_id: str) -> tuple[int, int, str]:
    found = service.account_state(account_id)
    assert found is not None
    return int(found[7]), int(found[8]), str(found[6])


async def until(condition: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def check_marks(service: BalanceService) -> None:
    """Each live account's marks (of holds of its shard, of holds of the other) are exactly the
    pending holds of both shards naming it, each kind on the right side."""
    naming: dict[str, set[str]] = {}
    for engine in service.engines:
        for hold in engine.ledger.holds.values():
            if hold.status == "pending" and hold.destination_account_id is not None:
                naming.setdefault(hold.destination_account_id, set()).add(f"{hold.account_id}:{hold.id}")
    for engine in service.engines:
        ledger = engine.ledger
        for account_id, acc in ledger.accounts.items():
            if acc.status == "moved" or acc.is_system:
                continue
            local = ledger.inbound_holds.get(account_id, set())
            remote = {m[len(INBOUND_HOLD) :] for m in ledger.inbound.get(account_id, ()) if m.startswith(INBOUND_HOLD)}
            assert local | remote == naming.get(account_id, set()) and not local & remote, account_id
            for mark in local:
                assert service.engine_for(mark.split(":")[0]) is engine
            for mark in remote:
                assert service.engine_for(mark.split(":")[0]) is not engine
        for account_id in list(ledger.inbound_holds) + list(ledger.inbound):  # none left where it moved from
            assert ledger.lives_here(account_id), account_id


async def check_after(build: Build, service: BalanceService, scene: Scene) -> BalanceService:
    """Every hold settled once where its accounts live; books; the idle merchant's close waits."""
    check_marks(service)
    for account_id, hold_id, destination, _ in scene.holds:
        engine = service.engine_for(account_id)
        assert engine is not None
        hold = engine.ledger.holds.find(account_id, hold_id)
        if hold is not None and hold.status == "pending":
            assert hold.destination_account_id == destination
    assert service.engine_for(scene.merchant).shard == service.engine_for(scene.partner).shard  # type: ignore[union-attr]
    close = c.UpdateAccount(scene.idle, status="closed")
    refused = await service.execute(close)
    assert refused.status == 409 and json.loads(refused.body)["code"] == "account_not_empty", refused.body
    await scene.settle(service, None)
    build.clock.now += 6_000_000  # the short holds expire (by the sweep of the shard they live on)
    short = [(a, h) for a, h, _, _ in scene.holds if scene.short(h)]

    def expired() -> bool:
        for a, h in short:
            engine = service.engine_for(a)
            found = None if engine is None else engine.ledger.holds.find(a, h)
            if found is None or found.status != "expired":
                return False
        return True

    await until(expired)
    for command, first in scene.captured:  # replays answer first
        again = await service.execute(command)
        assert (again.status, again.body, again.replayed) == (200, first.body, True)
    for shop in (*scene.shops, scene.merchant):  # each capture paid once, where the payee lives
        assert balance(service, shop)[0] == scene.paid.get(shop, 0), shop
    spent: dict[str, int] = {}
    for command, reply in scene.captured:
        spent[command.account_id] = spent.get(command.account_id, 0) + json.loads(reply.body)["hold"]["captured_amount"]
    for payer in (*scene.payers, *scene.buyers):
        idle = 5 if payer in scene.buyers else 0
        assert balance(service, payer)[:2] == (SEED - spent.get(payer, 0), idle), payer
    check_books(service)
    assert totals(service) == {"EUR": 0}
    await no_pending(service)
    check_marks(service)
    # The idle merchant: refused while a hold names it, closed once none does (after a restart too).
    for engine in service.engines:
        await engine.stop(checkpoint=False)
    service = build()
    await service.start()
    check_marks(service)
    assert (await service.execute(close)).status == 409
    assert (await service.execute(c.ReleaseHold(scene.buyers[0], "idle0"))).status == 200
    assert (await service.execute(close)).status == 409
    assert (await service.execute(c.ReleaseHold(scene.buyers[1], "idle1"))).status == 200
    closed = await service.execute(close)
    assert closed.status == 200, closed.body
    check_books(service)
    return service


@pytest.mark.parametrize("crash_after", [None, EXPORTED, MOVED_OUT, MOVED_IN])
async def test_a_partner_named_by_holds_and_holding_them_moves(
    build: Build, tmp_path: Path, crash_after: str | None
) -> None:
    service = build()
    service.moves_dir = tmp_path / "moves"
    await service.start()
    scene = Scene()
    await scene.build(service)
    if crash_after is None:
        moved = await service.move_partner(scene.partner, 1)
        assert moved["status"] == "done", moved
        assert moved["holds"] == PAYERS * 3
    else:
        save = service.save_move

        def crashing(record: MoveRecord) -> None:
            save(record)
            if record.step == crash_after:
                raise RuntimeError("crash")

        service.save_move = crashing
        with pytest.raises(RuntimeError):
            await service.move_partner(scene.partner, 1, "mv-crash")
        for engine in service.engines:
            await engine.stop(checkpoint=False)
        service = build()
        service.moves_dir = tmp_path / "moves"
        await service.start()  # resumes the move: after its move out, it only goes forward
        assert not list((tmp_path / "moves").glob("*.json"))
    # Cut before its move out, nothing was durable: the subtree serves where it was; after it,
    # the move is finished at the start. Either way, everything after it is the same.
    assert service.engine_for(scene.merchant).shard == (0 if crash_after == EXPORTED else 1)  # type: ignore[union-attr]
    check_books(service)
    service = await check_after(build, service, scene)
    await service.stop()


async def test_captures_paying_the_moving_merchant_wait_for_the_move(build: Build) -> None:
    """Captures of holds naming the partner's merchant (from both shards) and of its payers'
    holds, sent while the partner moves there and back: each answered 200 once (never a 503),
    paid once, where the merchant lived when it landed."""
    service = build()
    await service.start()
    scene = Scene()
    await scene.build(service)
    extra = []
    for i, buyer in enumerate(scene.buyers):
        for k in range(100):
            await scene.hold(service, buyer, f"x{i}-{k}", scene.merchant, 1 + k % 7, 3_600)
            extra.append((buyer, f"x{i}-{k}"))
    spans: list[tuple[float, float]] = []

    async def capturing(holds: list[tuple[str, str]]) -> None:
        loop = asyncio.get_running_loop()
        for account_id, hold_id in holds:
            begun = loop.time()
            await scene.capture(service, account_id, hold_id, None)
            spans.append((begun, loop.time()))
            await asyncio.sleep(0.003)

    clients = [asyncio.create_task(capturing(extra[n::4])) for n in range(4)]
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    moving = [loop.time()]
    there = await service.move_partner(scene.partner, 1)
    back = await service.move_partner(scene.partner, 0)
    moving.append(loop.time())
    for task in clients:
        await task
    during = [span for span in spans if span[0] < moving[1] and span[1] > moving[0]]
    assert len(during) >= 4, (len(during), moving, spans[:3])
    assert there["status"] == "done" and back["status"] == "done", (there, back)
    assert len(scene.captured) == len(extra)
    assert balance(service, scene.merchant)[0] == scene.paid[scene.merchant]
    check_books(service)
    await no_pending(service)
    service = await check_after(build, service, scene)
    await service.stop()
