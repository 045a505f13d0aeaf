"""Money across two shards on both backends (issue 14, items 1-3): replays answer first,
targets refuse on their own shard and the source takes the money back (recorded), closing
waits for money in flight, and holds whose destination lives on the other shard work, with
a restart between any two steps settling each movement exactly once."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable

import pytest
from faults import FaultyStorage
from two_shards import (
    Build,
    account,
    check_books,
    history_kinds,
    next_commit_fails,
    no_pending,
    ready_again,
    state,
    two,
)

from balance.domain import commands as c
from balance.domain import limits
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS, capture_leg_id
from balance.domain.model import HOLD_CAPTURED, HOLD_STATUS
from balance.engine.replies import Reply
from balance.service import BalanceService

# ---- item 1: replays first, refusals recorded -----------------------------------------------


async def test_a_transfer_sent_again_after_its_target_was_frozen_replays_its_success(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    transfer = c.Transfer("t-1", a, b, 300, "EUR")
    first = await service.execute(transfer)
    assert first.status == 201
    assert (await service.execute(c.UpdateAccount(b, status="frozen"))).status == 200

    again = await service.execute(transfer)

    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert (state(service, a)[0], state(service, b)[0]) == (700, 300)
    check_books(service)
    await service.stop()


async def test_a_refusal_found_by_the_target_shard_is_recorded_and_the_money_returned(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    assert (await service.execute(c.UpdateAccount(b, status="frozen"))).status == 200
    transfer = c.Transfer("t-2", a, b, 300, "EUR")

    refused = await service.execute(transfer)

    assert (refused.status, json.loads(refused.body)["code"]) == (409, "account_inactive")
    assert state(service, a)[0] == 1_000 and state(service, b)[0] == 0
    assert (await service.execute(c.UpdateAccount(b, status="active"))).status == 200
    again = await service.execute(transfer)  # the id keeps its first answer, as on one shard
    assert (again.status, again.body, again.replayed) == (409, refused.body, True)
    assert state(service, b)[0] == 0
    assert await history_kinds(service, a) == [("credit", "seed", 1000)]  # refused: out of the history
    missing = await service.execute(c.Transfer("t-3", a, "EU-1-0000000000000000", 5, "EUR"))
    assert (missing.status, json.loads(missing.body)["code"]) == (404, "account_not_found")
    wrong = await service.execute(c.Transfer("t-4", a, "EU-9-0000000000000000", 5, "EUR"))  # no such shard
    assert (wrong.status, json.loads(wrong.body)["code"]) == (404, "account_not_found")
    check_books(service)
    await no_pending(service)
    await service.stop()

    restarted = build()
    await restarted.start()
    for op_id, status in (("t-2", 409), ("t-3", 404)):
        replay = await restarted.execute(
            c.Transfer(op_id, a, b if op_id == "t-2" else "EU-1-0000000000000000", 300 if op_id == "t-2" else 5, "EUR")
        )
        assert (replay.status, replay.replayed) == (status, True)
    check_books(restarted)
    await restarted.stop()


# ---- item 2: a closed account takes nothing; closing waits for money in flight --------------


async def test_a_target_closed_before_its_leg_gets_nothing_and_the_source_gets_it_back(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    transfer = c.Transfer("t-5", a, b, 400, "EUR")
    source = service.engine_for(a)
    assert source is not None
    assert (await service.execute(c.UpdateAccount(b, status="closed"))).status == 200
    started = await source.execute(c.TransferOut(transfer))  # the source leg alone: a crash follows
    assert started.status == TRANSFER_IN_PROGRESS  # the source leg checks nothing of the target
    close_a = await service.execute(c.UpdateAccount(a, status="closed"))  # its money may come back
    assert json.loads(close_a.body)["code"] == "account_not_empty"
    check_books(service)
    await service.stop()

    restarted = build()
    await restarted.start()  # recovery: the target leg finds b closed, the money goes back

    assert state(restarted, a)[0] == 1_000 and state(restarted, b) == (0, 0, "closed")
    replay = await restarted.execute(transfer)
    assert (replay.status, json.loads(replay.body)["code"], replay.replayed) == (409, "account_inactive", True)
    check_books(restarted)
    await no_pending(restarted)
    await restarted.stop()


async def test_the_target_cannot_close_once_the_source_leg_has_committed(build: Build) -> None:
    """The target's shard learns of the leg as the source leg commits (not when the service
    gets round to the target leg), so no close slips in between."""
    service = build()
    await service.start()
    a, b = await two(service)
    source = service.engine_for(a)
    assert source is not None
    started = await source.execute(c.TransferOut(c.Transfer("t-7", a, b, 400, "EUR")))  # a crash follows
    assert started.status == TRANSFER_IN_PROGRESS

    closing = await service.execute(c.UpdateAccount(b, status="closed"))

    assert (closing.status, json.loads(closing.body)["code"]) == (409, "account_not_empty")
    await service.stop()
    restarted = build()
    await restarted.start()  # recovery lands the leg
    assert state(restarted, b)[0] == 400
    check_books(restarted)
    await no_pending(restarted)
    await restarted.stop()


async def test_a_payer_shard_reloaded_after_a_commit_that_landed_keeps_its_hold_marks_exact(build: Build) -> None:
    """A hold placed by a commit reported failed (503) that had landed is marked on its
    destination's shard once the payer's shard reloads; a hold released by such a commit no
    longer is."""
    service = build()
    await service.start()
    a, b = await two(service)
    c_ = await account(service, 1)
    assert (await service.execute(c.PlaceHold(a, "released", 10, 60, c_))).status == 201

    next_commit_lands_then_fails(service, a)
    assert (await service.execute(c.PlaceHold(a, "landed", 10, 60, b))).status == 503
    await ready_again(service)
    next_commit_lands_then_fails(service, a)
    assert (await service.execute(c.ReleaseHold(a, "released"))).status == 503
    await ready_again(service)

    assert await close(service, b) == NOT_EMPTY  # the hold that landed names it
    assert await close(service, c_) == (200, None)  # the released one no longer names it
    assert (await service.execute(c.PlaceHold(a, "landed", 10, 60, b))).status == 201  # its first answer
    assert (await service.execute(c.ReleaseHold(a, "landed"))).status == 200
    assert await close(service, b) == (200, None)
    check_books(service)
    await service.stop()


def next_commit_lands_then_fails(service: BalanceService, account_id: str) -> None:
    """The next commit of ``account_id``'s shard is written, then reported failed (a connection
    lost during COMMIT): the engine finds it landed and reloads."""
    storage = service.engine_for(account_id).storage  # type: ignore[union-attr]
    assert isinstance(storage, FaultyStorage)
    storage.fail("commit", landed=True)


async def test_closing_either_end_of_money_in_flight_is_refused_until_it_lands(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    next_commit_fails(service, b)
    transfer = c.Transfer("t-6", a, b, 1_000, "EUR")
    assert (await service.execute(transfer)).status == 503  # the money is in transit
    await ready_again(service)

    for end in (a, b):  # a: empty, but the money may come back; b: the money is on its way
        closing = await service.execute(c.UpdateAccount(end, status="closed"))
        assert (closing.status, json.loads(closing.body)["code"]) == (409, "account_not_empty")
    assert (await service.execute(transfer)).status == 201
    assert (await service.execute(c.UpdateAccount(a, status="closed"))).status == 200
    assert json.loads((await service.execute(c.UpdateAccount(b, status="closed"))).body)["code"] == "account_not_empty"
    check_books(service)
    await service.stop()


# ---- item 3: holds whose destination lives on the other shard -------------------------------


async def test_a_hold_to_another_shard_is_placed_captured_released_and_expired(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)

    placed = await service.execute(c.PlaceHold(a, "h1", 300, 60, b))
    assert placed.status == 201, placed.body
    assert state(service, a)[:2] == (1_000, 300)
    captured = await service.execute(c.CaptureHold(a, "h1", 200))
    assert captured.status == 200, captured.body
    body = json.loads(captured.body)
    assert body["hold"]["status"] == "captured" and body["account"]["balance"] == 800
    assert state(service, a)[:2] == (800, 0) and state(service, b)[0] == 200
    replay = await service.execute(c.CaptureHold(a, "h1", 200))
    assert (replay.status, replay.body, replay.replayed) == (200, captured.body, True)
    assert await history_kinds(service, b) == [("transfer", "h1", 200)]

    assert (await service.execute(c.PlaceHold(a, "h2", 100, 60, b))).status == 201
    assert (await service.execute(c.ReleaseHold(a, "h2"))).status == 200
    assert (await service.execute(c.PlaceHold(a, "h3", 100, 5, b))).status == 201
    build.clock.now += 6_000_000
    for _ in range(200):
        if state(service, a)[1] == 0:
            break
        await asyncio.sleep(0.01)
    assert state(service, a)[:2] == (800, 0) and state(service, b)[0] == 200
    check_books(service)
    await no_pending(service)
    await service.stop()


async def test_a_hold_to_another_shard_checks_its_destination_there(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    usd = await account(service, 1, "USD")
    assert (await service.execute(c.UpdateAccount(b, status="frozen"))).status == 200

    frozen = await service.execute(c.PlaceHold(a, "h1", 10, 60, b))
    missing = await service.execute(c.PlaceHold(a, "h2", 10, 60, "EU-1-0000000000000000"))
    mismatch = await service.execute(c.PlaceHold(a, "h3", 10, 60, usd))

    assert json.loads(frozen.body)["code"] == "account_inactive"
    assert json.loads(missing.body)["code"] == "account_not_found"
    assert json.loads(mismatch.body)["code"] == "currency_mismatch"
    assert (await service.execute(c.UpdateAccount(b, status="active"))).status == 200
    again = await service.execute(c.PlaceHold(a, "h1", 10, 60, b))  # recorded, as on one shard
    assert (again.status, again.replayed) == (409, True)
    ok = await service.execute(c.PlaceHold(a, "h4", 10, 60, b))
    assert ok.status == 201
    assert (await service.execute(c.UpdateAccount(b, status="frozen"))).status == 200
    settled = await service.execute(c.CaptureHold(a, "h4"))  # a hold naming a frozen account settles
    assert settled.status == 200 and state(service, b)[0] == 10
    check_books(service)
    await service.stop()


async def test_a_capture_refused_by_its_destination_returns_the_money(build: Build) -> None:
    """The destination's leg refuses (its balance would pass 2^62): the capture becomes a
    release on the payer's shard, recorded, and the payer keeps its money."""
    service = build()
    await service.start()
    a, b = await two(service)
    assert (await service.execute(c.Credit(b, "near-the-top", limits.BALANCE_MAX - 100))).status == 201
    assert (await service.execute(c.PlaceHold(a, "h1", 300, 60, b))).status == 201

    refused = await service.execute(c.CaptureHold(a, "h1"))

    assert (refused.status, json.loads(refused.body)["code"]) == (422, "limit_exceeded")
    assert state(service, a)[:2] == (1_000, 0) and state(service, b)[0] == limits.BALANCE_MAX - 100
    again = await service.execute(c.CaptureHold(a, "h1"))
    assert (again.status, again.replayed) == (422, True)
    hold = await service.engine_for(a).hold_state(a, "h1")  # type: ignore[union-attr]
    assert hold is not None and hold[HOLD_STATUS] == "released"
    assert [kind for kind, _, _ in await history_kinds(service, a)] == ["credit", "hold", "release"]
    await service.stop()
    service = build()
    await service.start()
    assert state(service, a)[:2] == (1_000, 0)
    hold = await service.engine_for(a).hold_state(a, "h1")  # type: ignore[union-attr]
    assert hold is not None and hold[HOLD_STATUS] == "released"
    check_books(service)
    await no_pending(service)
    await service.stop()


async def close(service: BalanceService, account_id: str) -> tuple[int, str | None]:
    reply = await service.execute(c.UpdateAccount(account_id, status="closed"))
    return reply.status, json.loads(reply.body).get("code")


NOT_EMPTY = (409, "account_not_empty")


@pytest.mark.parametrize("stop", ["clean", "crash"])
async def test_closing_the_destination_of_a_pending_hold_on_another_shard_waits_for_the_hold(
    build: Build, stop: str
) -> None:
    """The destination's shard marks the hold before it is placed, keeps the mark while it is
    pending (rebuilt at start from the payer's shard), and drops it once the hold is settled."""
    service = build()
    await service.start()
    a, b = await two(service)
    assert (await service.execute(c.PlaceHold(a, "h1", 300, 60, b))).status == 201

    assert await close(service, b) == NOT_EMPTY
    if stop == "clean":
        await service.stop()
    else:  # the tables as a crash leaves them: recovery replays the journal
        for engine in service.engines:
            await engine.stop(checkpoint=False)
    service = build()
    await service.start()
    assert await close(service, b) == NOT_EMPTY  # rebuilt from the payer's pending holds
    assert (await service.execute(c.ReleaseHold(a, "h1"))).status == 200
    assert await close(service, b) == (200, None)
    check_books(service)
    await service.stop()


async def test_a_hold_to_another_shard_stops_blocking_a_close_once_settled_or_never_placed(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    c1, c2, c3 = await account(service, 1), await account(service, 1), await account(service, 1)

    assert (await service.execute(c.PlaceHold(a, "expires", 100, 5, c1))).status == 201
    assert (await service.execute(c.PlaceHold(a, "too-much", 5_000, 60, c2))).status == 422  # refused
    assert (await service.execute(c.PlaceHold(a, "captured", 100, 60, c3))).status == 201
    assert await close(service, c1) == NOT_EMPTY
    assert await close(service, c3) == NOT_EMPTY
    assert await close(service, c2) == (200, None)
    build.clock.now += 6_000_000  # type: ignore[attr-defined]
    for _ in range(200):  # the sweep expires it
        if state(service, a)[1] == 100:
            break
        await asyncio.sleep(0.01)
    assert await close(service, c1) == (200, None)
    assert (await service.execute(c.CaptureHold(a, "captured", 40))).status == 200
    assert state(service, c3)[0] == 40
    assert await close(service, c3) == NOT_EMPTY  # money on it now
    for shard in (0, 1):
        assert service.shards[shard].inbound_marks("") == []  # nothing left behind
    check_books(service)
    await service.stop()


async def test_holds_racing_a_close_of_their_destination_on_another_shard_never_name_a_closed_account(
    build: Build,
) -> None:
    """Holds naming an account of the other shard, sent while it is being closed: either the
    close is refused (a hold came first) or the holds are refused (recorded if the close was
    durable, 503 if it was not yet); never a pending hold naming a closed account."""
    service = build()
    await service.start()
    a, _ = await two(service, seed=100_000)
    rng = random.Random(14)
    outcomes: dict[str, int] = {}

    async def later(reply: Awaitable[Reply]) -> Reply:
        await asyncio.sleep(rng.random() * 0.003)
        return await reply

    for round_ in range(40):
        b = await account(service, 1)
        holds = [c.PlaceHold(a, f"r{round_}-{i}", 1, 60, b) for i in range(4)]
        close, *replies = await asyncio.gather(
            later(service.execute(c.UpdateAccount(b, status="closed"))),
            *(later(service.execute(hold)) for hold in holds),
        )
        assert close.status in (200, 409) and all(r.status in (201, 409, 503) for r in replies), close.body
        placed = [hold for hold, reply in zip(holds, replies, strict=True) if reply.status == 201]
        closed = state(service, b)[2] == "closed"
        outcomes["closed" if closed else "refused"] = outcomes.get("closed" if closed else "refused", 0) + 1
        assert not (closed and placed), f"round {round_}: holds {placed} name a closed account"
        for hold in placed:
            assert (await service.execute(c.ReleaseHold(a, hold.op_id))).status == 200
    assert set(outcomes) == {"closed", "refused"}, outcomes  # the race went both ways
    check_books(service)
    await service.stop()


@pytest.mark.parametrize("crash_after", ["source_leg", "target_leg"])
async def test_a_capture_to_another_shard_interrupted_by_a_restart_completes_exactly_once(
    build: Build, crash_after: str
) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    assert (await service.execute(c.PlaceHold(a, "h1", 300, 60, b))).status == 201
    source, target = service.engine_for(a), service.engine_for(b)
    assert source is not None and target is not None
    started = await source.execute(c.CaptureHold(a, "h1", 250))  # the source leg alone
    assert started.status == TRANSFER_IN_PROGRESS
    if crash_after == "target_leg":
        leg = c.Transfer(capture_leg_id("h1"), a, b, 250, "EUR")
        assert (await target.execute(c.TransferIn(leg))).status == 201
    await service.stop()

    restarted = build()
    await restarted.start()

    assert state(restarted, a)[:2] == (750, 0) and state(restarted, b)[0] == 250
    hold = await restarted.engine_for(a).hold_state(a, "h1")  # type: ignore[union-attr]
    assert hold is not None and hold[HOLD_STATUS] == HOLD_CAPTURED
    replay = await restarted.execute(c.CaptureHold(a, "h1", 250))
    assert (replay.status, replay.replayed) == (200, True)
    assert json.loads(replay.body)["hold"]["captured_amount"] == 250
    check_books(restarted)
    await no_pending(restarted)
    await restarted.stop()
    again = build()
    await again.start()
    assert state(again, b)[0] == 250  # once
    check_books(again)
    await again.stop()
