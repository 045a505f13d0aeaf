"""Money across two shards on both backends (issue 14, items 1-3): replays answer first,
targets refuse on their own shard and the source takes the money back (recorded), closing
waits for money in flight, and holds whose destination lives on the other shard work, with
a restart between any two steps settling each movement exactly once."""

from __future__ import annotations

import asyncio
import json

import pytest
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
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS, capture_leg_id
from balance.domain.model import HOLD_CAPTURED, HOLD_STATUS

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


async def test_a_target_closed_between_the_legs_gets_nothing_and_the_source_gets_it_back(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    transfer = c.Transfer("t-5", a, b, 400, "EUR")
    source = service.engine_for(a)
    assert source is not None
    started = await source.execute(c.TransferOut(transfer))  # the source leg alone: a crash follows
    assert started.status == TRANSFER_IN_PROGRESS
    close_a = await service.execute(c.UpdateAccount(a, status="closed"))  # its money may come back
    assert json.loads(close_a.body)["code"] == "account_not_empty"
    assert (await service.execute(c.UpdateAccount(b, status="closed"))).status == 200  # in the window
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


async def test_a_capture_to_a_closed_account_on_another_shard_returns_the_money(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    assert (await service.execute(c.PlaceHold(a, "h1", 300, 60, b))).status == 201
    assert (await service.execute(c.UpdateAccount(b, status="closed"))).status == 200

    refused = await service.execute(c.CaptureHold(a, "h1"))

    assert (refused.status, json.loads(refused.body)["code"]) == (409, "account_inactive")
    assert state(service, a)[:2] == (1_000, 0) and state(service, b) == (0, 0, "closed")
    again = await service.execute(c.CaptureHold(a, "h1"))
    assert (again.status, again.replayed) == (409, True)
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
