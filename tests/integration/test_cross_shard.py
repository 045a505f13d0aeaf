"""Transfers between accounts on different shards of one process, on SQLite files and MariaDB.

Two durable legs (source -> transit, transit -> target) and a completion; a crash or a
failing shard between them is finished by a retry of the same id or by the next start.
"""

from __future__ import annotations

import json

from two_shards import Build, next_commit_fails, ready_again, state, totals, two

from balance.domain import commands as c
from balance.service import BalanceService


def balance(service: BalanceService, account_id: str) -> int:
    return state(service, account_id)[0]


async def test_a_transfer_across_shards_moves_the_money_and_replays_the_same_answer(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    transfer = c.Transfer("t-1", a, b, 300, "EUR", "rent", b'{"k":1}')

    reply = await service.execute(transfer)

    assert reply.status == 201 and not reply.replayed
    body = json.loads(reply.body)
    assert [acc["id"] for acc in body["accounts"]] == [a, b]
    assert [acc["balance"] for acc in body["accounts"]] == [700, 300]
    assert body["transaction"]["counterparty_account_id"] == b
    assert (balance(service, a), balance(service, b)) == (700, 300)
    assert totals(service) == {"EUR": 0}
    replay = await service.execute(transfer)
    assert (replay.status, replay.body, replay.replayed) == (201, reply.body, True)
    conflict = await service.execute(c.Transfer("t-1", a, b, 301, "EUR", "rent", b'{"k":1}'))
    assert json.loads(conflict.body)["code"] == "idempotency_conflict"
    target_history = await service.engine_for(b).storage.history(b, 10, None, None, None)  # type: ignore[union-attr]
    assert [(row[3], row[4], row[10], row[8]) for row in target_history] == [("transfer", "t-1", a, 300)]
    assert await service.engines[0].storage.pending_transfers() == []
    await service.stop()


async def test_refusals_across_shards_are_answered_and_move_nothing(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    too_much = await service.execute(c.Transfer("t-big", a, b, 5_000, "EUR"))
    assert (too_much.status, json.loads(too_much.body)["code"]) == (422, "insufficient_funds")
    wrong = await service.execute(c.Transfer("t-cur", a, b, 5, "USD"))
    assert json.loads(wrong.body)["code"] == "currency_mismatch"
    assert (await service.execute(c.UpdateAccount(b, status="frozen"))).status == 200
    frozen = await service.execute(c.Transfer("t-frozen", a, b, 5, "EUR"))
    assert (frozen.status, json.loads(frozen.body)["code"]) == (409, "account_inactive")
    missing = await service.execute(c.Transfer("t-missing", a, "EU-1-0000000000000000", 5, "EUR"))
    assert json.loads(missing.body)["code"] == "account_not_found"
    assert (balance(service, a), balance(service, b)) == (1_000, 0)
    assert totals(service) == {"EUR": 0}
    await service.stop()


async def test_a_target_shard_failing_between_the_legs_is_finished_by_a_retry(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    next_commit_fails(service, b)
    transfer = c.Transfer("t-2", a, b, 250, "EUR")

    failed = await service.execute(transfer)

    assert failed.status == 503
    assert (balance(service, a), balance(service, b)) == (750, 0)  # the money is in transit
    assert totals(service) == {"EUR": 0}
    assert len(await service.engines[0].storage.pending_transfers()) == 1
    await ready_again(service)  # the target shard resynchronises after its failed commit
    retried = await service.execute(transfer)
    assert retried.status == 201
    assert (balance(service, a), balance(service, b)) == (750, 250)
    assert await service.engines[0].storage.pending_transfers() == []
    again = await service.execute(transfer)
    assert (again.body, again.replayed) == (retried.body, True)
    assert totals(service) == {"EUR": 0}
    await service.stop()


async def test_a_transfer_left_in_transit_by_a_crash_is_finished_at_the_next_start(build: Build) -> None:
    service = build()
    await service.start()
    a, b = await two(service)
    next_commit_fails(service, b)
    first = await service.execute(c.Transfer("t-3", a, b, 400, "EUR"))
    assert first.status == 503
    await service.stop()  # as good as a crash here: the first leg is durable, the second is not

    restarted = build()
    await restarted.start()

    assert (balance(restarted, a), balance(restarted, b)) == (600, 400)
    assert totals(restarted) == {"EUR": 0}
    for engine in restarted.engines:
        assert await engine.storage.pending_transfers() == []
    replay = await restarted.execute(c.Transfer("t-3", a, b, 400, "EUR"))
    assert replay.status == 201 and replay.replayed
    assert [acc["balance"] for acc in json.loads(replay.body)["accounts"]] == [600, 400]
    await restarted.stop()
