"""The attacker's cases of issue 14, one named test each, over HTTP with a real server (the
built-in HTTP/1.1 server on a socket). Each asserts the rule now in force; the property test
``tests/property/test_adversary.py`` plays them all at random next to honest partners.

Teardown proves the books of every deployment (``conftest.prove_books``): each shard's
invariants, each currency's zero sum, and a fresh recovery that finds the same accounts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

LIMIT = 2**62


@pytest.fixture
async def server(make_api: Any) -> AsyncIterator[Any]:
    """One shard behind a real server."""
    async with make_api(shards=1, transport="http") as api:
        yield api


@pytest.fixture
async def server2(make_api: Any) -> AsyncIterator[Any]:
    """Two shards behind a real server."""
    async with make_api(shards=2, transport="http") as api:
        yield api


async def on_shard(api: Any, shard: int) -> str:
    """A top-level account placed on ``shard`` (the least filled takes the next one)."""
    for _ in range(8):
        account_id = str((await api.create_account())["id"])
        if account_id.split("-")[1] == str(shard):
            return account_id
    raise AssertionError("no account placed on the shard")


async def partner_with_child(api: Any) -> tuple[str, str, str]:
    """(partner, its child, the partner's own key: the default read and move)."""
    partner = (await api.create_account())["id"]
    child = (await api.create_account(partner, kind="user"))["id"]
    return partner, child, await api.create_key(partner)


async def test_the_payers_own_key_cannot_release_or_capture_a_gateways_hold(server: Any) -> None:
    partner, payer, _ = await partner_with_child(server)
    payer_key = await server.create_key(payer)
    gateway = await server.create_key((await server.create_account())["id"], scopes=["read", "move", "platform"])
    await server.credit(payer, 1_000)
    await server.hold(payer, 1_000, key=gateway, id="order-1")

    release = await server.post(f"/v1/accounts/{payer}/holds/order-1/release", key=payer_key)
    capture = await server.post(f"/v1/accounts/{payer}/holds/order-1/capture", {"amount": 1}, key=payer_key)

    server.assert_problem(release, 403, "forbidden")
    server.assert_problem(capture, 403, "forbidden")
    assert (await server.get_hold(payer, "order-1"))["status"] == "pending"
    assert (await server.capture(payer, "order-1", key=gateway))["hold"]["captured_amount"] == 1_000


async def test_a_partner_cannot_credit_or_debit_itself_without_the_funds_scope(server: Any) -> None:
    partner, _, key = await partner_with_child(server)
    await server.credit(partner, 100)

    credit = await server.post(f"/v1/accounts/{partner}/credits", {"id": "free-money", "amount": 10**9}, key=key)
    debit = await server.post(f"/v1/accounts/{partner}/debits", {"id": "cash-out", "amount": 100}, key=key)

    server.assert_problem(credit, 403, "forbidden")
    server.assert_problem(debit, 403, "forbidden")
    assert (await server.account(partner))["balance"] == 100


async def test_a_partner_cannot_give_its_child_a_huge_credit_limit_without_the_limits_scope(server: Any) -> None:
    partner, child, key = await partner_with_child(server)

    patched = await server.patch(f"/v1/accounts/{child}", {"credit_limit": LIMIT}, key=key)
    created = await server.post("/v1/accounts", {"parent_id": partner, "kind": "user", "credit_limit": LIMIT}, key=key)

    server.assert_problem(patched, 403, "forbidden")
    server.assert_problem(created, 403, "forbidden")
    assert (await server.account(child))["credit_limit"] == 0


async def test_pushing_funding_and_settlement_past_64_bits_fails_only_the_pusher(server: Any) -> None:
    """Non-system balances stop at 2^62 (422 limit_exceeded); the shared system accounts are
    exact past 2^63, so everybody else's credits, debits and captures keep working."""
    attacker = (await server.create_account())["id"]
    funds = await server.create_key(attacker, scopes=["read", "move", "funds"])
    pushers = [(await server.create_account(attacker, kind="user"))["id"] for _ in range(3)]
    for pusher in pushers:  # funding goes to -3 * 2^62, below -2^63
        await server.credit(pusher, LIMIT, key=funds)
    over = await server.post(f"/v1/accounts/{pushers[0]}/credits", {"id": "one-more", "amount": 1}, key=funds)
    server.assert_problem(over, 422, "limit_exceeded")
    past = await server.post(f"/v1/accounts/{pushers[1]}/credits", {"id": "past", "amount": LIMIT + 1}, key=funds)
    assert past.status_code == 422, past.text
    for pusher in pushers:  # settlement goes to 3 * 2^62, past 2^63
        await server.debit(pusher, LIMIT, key=funds)

    honest = (await server.create_account())["id"]
    await server.credit(honest, 500)
    await server.debit(honest, 100)
    await server.hold(honest, 200, id="h")
    assert (await server.capture(honest, "h"))["account"]["balance"] == 200
    engine = server.service.engines[0]
    settlement = [a for a in engine.ledger.accounts.values() if a.id.startswith("SYS-") and a.kind == "settlement"]
    assert [a.balance for a in settlement] == [3 * LIMIT + 300]


async def test_a_cross_shard_transfer_sent_again_after_its_target_was_frozen_answers_its_first_answer(
    server2: Any,
) -> None:
    source, target = await on_shard(server2, 0), await on_shard(server2, 1)
    await server2.credit(source, 1_000)
    body = {"id": "t-1", "from_account_id": source, "to_account_id": target, "amount": 300, "currency": "USD"}
    first = await server2.post("/v1/transfers", body)
    assert first.status_code == 201, first.text
    await server2.patch_account(target, status="frozen")

    again = await server2.post("/v1/transfers", body)

    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers.get("idempotent-replayed") == "true"
    assert (await server2.account(target))["balance"] == 300


async def test_a_refused_cross_shard_transfer_stays_refused(server2: Any) -> None:
    source, target = await on_shard(server2, 0), await on_shard(server2, 1)
    await server2.credit(source, 1_000)
    await server2.patch_account(target, status="frozen")
    body = {"id": "t-2", "from_account_id": source, "to_account_id": target, "amount": 300, "currency": "USD"}
    refused = await server2.post("/v1/transfers", body)
    server2.assert_problem(refused, 409, "account_inactive")
    await server2.patch_account(target, status="active")

    again = await server2.post("/v1/transfers", body)

    assert (again.status_code, again.json()) == (409, refused.json())
    assert (await server2.account(source))["balance"] == 1_000
    assert (await server2.account(target))["balance"] == 0


async def test_a_body_with_duplicate_keys_is_refused_and_changes_nothing(server: Any) -> None:
    account = (await server.create_account())["id"]
    raw = b'{"id":"dup","amount":1,"amount":999999}'

    response = await server.post(
        f"/v1/accounts/{account}/credits", content=raw, headers={"Content-Type": "application/json"}
    )

    server.assert_problem(response, 422, "validation_error")
    assert (await server.account(account))["balance"] == 0


async def test_the_keys_of_a_frozen_account_lose_their_power_to_move_money(server: Any) -> None:
    partner, child, _ = await partner_with_child(server)
    child_key = await server.create_key(child)
    await server.credit(child, 100)
    await server.patch_account(child, status="frozen")

    moved = await server.post(f"/v1/accounts/{child}/holds", {"id": "h", "amount": 10}, key=child_key)
    read = await server.get(f"/v1/accounts/{child}", key=child_key)

    server.assert_problem(moved, 403, "forbidden")
    assert read.status_code == 200  # reads stay while frozen
    await server.patch_account(child, status="active")
    await server.debit(child, 100)
    await server.patch_account(child, status="closed")
    server.assert_problem(await server.get(f"/v1/accounts/{child}", key=child_key), 401, "unauthorized")


async def test_a_partner_cannot_lift_a_freeze_the_admin_set(server: Any) -> None:
    partner, child, key = await partner_with_child(server)
    await server.patch_account(child, status="frozen")  # by the admin

    lifted = await server.patch(f"/v1/accounts/{child}", {"status": "active"}, key=key)

    server.assert_problem(lifted, 403, "forbidden")
    assert (await server.account(child))["status"] == "frozen"


async def test_closing_the_destination_of_a_pending_hold_on_the_same_shard_is_refused(server: Any) -> None:
    payer, destination = (await server.create_account())["id"], (await server.create_account())["id"]
    await server.credit(payer, 100)
    await server.hold(payer, 60, id="h", destination_account_id=destination)

    closing = await server.patch(f"/v1/accounts/{destination}", {"status": "closed"})

    server.assert_problem(closing, 409, "account_not_empty")
    await server.release(payer, "h")
    assert (await server.patch_account(destination, status="closed"))["status"] == "closed"


async def test_closing_the_destination_of_a_pending_hold_on_another_shard_is_refused(server2: Any) -> None:
    payer, destination = await on_shard(server2, 0), await on_shard(server2, 1)
    await server2.credit(payer, 100)
    await server2.hold(payer, 60, id="h", destination_account_id=destination)

    closing = await server2.patch(f"/v1/accounts/{destination}", {"status": "closed"})

    server2.assert_problem(closing, 409, "account_not_empty")
    captured = await server2.capture(payer, "h", 50)  # the hold still settles into it
    assert captured["hold"]["captured_amount"] == 50
    assert (await server2.account(destination))["balance"] == 50
    server2.assert_problem(await server2.patch(f"/v1/accounts/{destination}", {"status": "closed"}), 409,
                           "account_not_empty")  # fmt: skip
