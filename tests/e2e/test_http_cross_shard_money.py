"""Money across two shards over real HTTP (issue 14, items 1 and 2): a transfer racing a
close of its cross-shard target never leaves money in a closed account, and a transfer sent
again answers its first answer whatever became of its target."""

from __future__ import annotations

import asyncio
from typing import Any

TRIES = 300
AT_ONCE = 30  # tries racing at the same time


async def _on_shard(api: Any, shard: int, **fields: Any) -> str:
    for _ in range(8):
        account = await api.create_account(**fields)
        if account["id"].split("-")[1] == str(shard):
            return str(account["id"])
    raise AssertionError("no account placed on the shard")


def _check_books(api: Any) -> None:
    """Every shard's invariants (each sums to zero per currency, reserved == pending holds,
    closed accounts hold nothing) and no closed account holding money."""
    for engine in api.service.engines:
        engine.ledger.check_invariants()
        for account in engine.ledger.accounts.values():
            if account.status == "closed":
                assert (account.balance, account.reserved) == (0, 0), account.id


async def test_transfers_racing_a_close_of_their_cross_shard_target_leave_no_money_in_a_closed_account(
    make_api: Any,
) -> None:
    async with make_api(shards=2, transport="http") as api:
        source = await _on_shard(api, 0)
        await api.credit(source, TRIES * 10)
        targets = [await _on_shard(api, 1) for _ in range(TRIES)]
        outcomes: dict[tuple[int, int], int] = {}

        async def race(target: str) -> None:
            body = {"id": api.op_id("race"), "from_account_id": source, "to_account_id": target,
                    "amount": 10, "currency": "USD"}  # fmt: skip
            transfer, close = await asyncio.gather(
                api.post("/v1/transfers", body), api.patch(f"/v1/accounts/{target}", {"status": "closed"})
            )
            key = (transfer.status_code, close.status_code)
            outcomes[key] = outcomes.get(key, 0) + 1
            if transfer.status_code == 201:  # landed first: the close must have been refused
                api.assert_problem(close, 409, "account_not_empty")
            else:
                api.assert_problem(transfer, 409, "account_inactive")
                assert close.status_code == 200, close.text
            again = await api.post("/v1/transfers", body)  # the first answer, replayed
            assert (again.status_code, again.json()) == (transfer.status_code, transfer.json())

        for start in range(0, TRIES, AT_ONCE):
            await asyncio.gather(*(race(target) for target in targets[start : start + AT_ONCE]))

        assert sum(outcomes.values()) == TRIES and set(outcomes) <= {(201, 409), (409, 200)}, outcomes
        _check_books(api)
        landed = outcomes.get((201, 409), 0)
        assert (await api.account(source))["balance"] == (TRIES - landed) * 10
        for engine in api.service.engines:
            assert await engine.storage.pending_transfers() == []


async def test_a_cross_shard_transfer_sent_again_after_its_target_was_frozen_answers_201(make_api: Any) -> None:
    async with make_api(shards=2, transport="http") as api:
        source, target = await _on_shard(api, 0), await _on_shard(api, 1)
        await api.credit(source, 100)
        body = {"id": api.op_id("t"), "from_account_id": source, "to_account_id": target,
                "amount": 40, "currency": "USD"}  # fmt: skip
        first = await api.post("/v1/transfers", body)
        assert first.status_code == 201, first.text
        await api.patch_account(target, status="frozen")

        again = await api.post("/v1/transfers", body)

        assert (again.status_code, again.json()) == (201, first.json())
        refused_body = {**body, "id": api.op_id("t")}
        refused = await api.post("/v1/transfers", refused_body)
        api.assert_problem(refused, 409, "account_inactive")
        await api.patch_account(target, status="active")
        api.assert_problem(await api.post("/v1/transfers", refused_body), 409, "account_inactive")  # recorded
        closing = await api.patch(f"/v1/accounts/{target}", {"status": "closed"})
        api.assert_problem(closing, 409, "account_not_empty")
        _check_books(api)
