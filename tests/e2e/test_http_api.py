"""The HTTP contract (/work/shared/API.md) end to end: a real service on SQLite, over ASGI."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from balance.service import shard_of

if TYPE_CHECKING:  # tests/e2e is no package: the harness is reached through fixtures
    from tests.e2e.conftest import Api, MakeApi


ACCOUNT_FIELDS = {
    "id", "parent_id", "kind", "region", "currency", "name", "status", "balance", "reserved", "available",
    "credit_limit", "exhausted", "version", "created_at", "updated_at", "metadata",
}  # fmt: skip
HOLD_FIELDS = {
    "id", "account_id", "amount", "captured_amount", "currency", "status", "destination_account_id",
    "expires_at", "created_at", "updated_at", "metadata",
}  # fmt: skip
TXN_FIELDS = {
    "id", "operation_id", "kind", "direction", "account_id", "counterparty_account_id", "amount", "currency", "hold_id", "balance_after",
    "reserved_after", "version", "created_at", "metadata",
}  # fmt: skip

# Every route of API.md, as (method, OpenAPI path).
CONTRACT_ROUTES = [
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts/{id}"),
    ("patch", "/v1/accounts/{id}"),
    ("get", "/v1/accounts/{id}/children"),
    ("post", "/v1/accounts/{id}/keys"),
    ("post", "/v1/accounts/{id}/credits"),
    ("post", "/v1/accounts/{id}/debits"),
    ("post", "/v1/transfers"),
    ("post", "/v1/accounts/{id}/holds"),
    ("post", "/v1/accounts/{id}/holds/{hold_id}/capture"),
    ("post", "/v1/accounts/{id}/holds/{hold_id}/release"),
    ("get", "/v1/accounts/{id}/holds/{hold_id}"),
    ("post", "/v1/batch"),
    ("get", "/v1/accounts/{id}/transactions"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def assert_account_shape(account: dict[str, Any]) -> None:
    assert set(account) >= ACCOUNT_FIELDS, set(account) ^ ACCOUNT_FIELDS
    assert account["available"] == account["balance"] + account["credit_limit"] - account["reserved"]
    assert parse_time(account["created_at"]).tzinfo is not None
    assert parse_time(account["updated_at"]) >= parse_time(account["created_at"])


# ---- accounts ------------------------------------------------------------------------------


async def test_create_top_level_account(api: Api) -> None:
    body = {"kind": "partner", "region": "EU", "currency": "EUR", "credit_limit": 500, "name": "Acme",
            "metadata": {"tier": "gold", "n": 1}}  # fmt: skip
    response = await api.post("/v1/accounts", body)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    account = response.json()
    assert_account_shape(account)
    assert account["parent_id"] is None
    assert (account["kind"], account["region"], account["currency"], account["name"]) == (
        "partner",
        "EU",
        "EUR",
        "Acme",
    )
    assert account["status"] == "active"
    assert (account["balance"], account["reserved"], account["credit_limit"], account["available"]) == (0, 0, 500, 500)
    assert account["exhausted"] is False
    assert account["metadata"] == {"tier": "gold", "n": 1}
    assert account["id"].startswith("EU-")
    assert await api.account(account["id"]) == account


async def test_child_inherits_region_and_currency_unless_stated(api: Api) -> None:
    parent = await api.create_account(region="ASIA", currency="JPY")
    child = await api.create_account(parent["id"], kind="provider")
    assert (child["parent_id"], child["region"], child["currency"], child["kind"]) == (
        parent["id"],
        "ASIA",
        "JPY",
        "provider",
    )
    other = await api.create_account(parent["id"], kind="user", region="EU", currency="EUR")
    assert (other["region"], other["currency"]) == ("EU", "EUR")
    grandchild = await api.create_account(child["id"], kind="user")
    assert (grandchild["parent_id"], grandchild["region"], grandchild["currency"]) == (child["id"], "ASIA", "JPY")
    assert await api.account(grandchild["id"]) == grandchild


async def test_patch_status_name_metadata_credit_limit(api: Api) -> None:
    account = await api.create_account(name="before", metadata={"a": 1})
    patched = await api.patch_account(account["id"], name="after", metadata={"b": [1, 2]}, credit_limit=700)
    assert (patched["name"], patched["metadata"], patched["credit_limit"], patched["available"]) == (
        "after",
        {"b": [1, 2]},
        700,
        700,
    )
    assert patched["version"] > account["version"]
    assert patched["status"] == "active"
    frozen = await api.patch_account(account["id"], status="frozen")
    assert frozen["status"] == "frozen"
    assert (frozen["name"], frozen["metadata"], frozen["credit_limit"]) == ("after", {"b": [1, 2]}, 700)  # untouched
    active = await api.patch_account(account["id"], status="active")
    assert active["status"] == "active"
    closed = await api.patch_account(account["id"], status="closed")
    assert closed["status"] == "closed"
    assert await api.account(account["id"]) == closed
    # An empty patch body is a no-op patch, not an error.
    other = await api.create_account()
    response = await api.patch(f"/v1/accounts/{other['id']}", content=b"")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == other["name"]


async def test_children_listing_with_limit_and_cursor(api: Api) -> None:
    parent = await api.create_account()
    children = [await api.create_account(parent["id"], kind="user", name=f"c{i}") for i in range(5)]
    grandchild = await api.create_account(children[0]["id"], kind="user")
    seen: list[dict[str, Any]] = []
    pages = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await api.get(f"/v1/accounts/{parent['id']}/children", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"data", "next_cursor"}
        assert len(page["data"]) <= 2
        pages.append(len(page["data"]))
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [2, 2, 1]
    ids = [child["id"] for child in seen]
    assert len(ids) == len(set(ids)) == 5  # no duplicate, none missing
    assert set(ids) == {child["id"] for child in children}
    assert grandchild["id"] not in ids  # direct children only
    for account in seen:
        assert_account_shape(account)
        assert account["parent_id"] == parent["id"]
    # Without a limit: everything at once.
    response = await api.get(f"/v1/accounts/{parent['id']}/children")
    assert {a["id"] for a in response.json()["data"]} == set(ids)
    assert response.json()["next_cursor"] is None
    # A leaf has none.
    response = await api.get(f"/v1/accounts/{grandchild['id']}/children")
    assert response.json() == {"data": [], "next_cursor": None}


async def test_create_key_shown_once(api: Api) -> None:
    account = await api.create_account()
    response = await api.post(f"/v1/accounts/{account['id']}/keys")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"key", "account_id", "key_id", "prefix", "scopes", "created_at", "revoked_at", "client_id",
                         "replayed"}  # fmt: skip
    assert body["account_id"] == account["id"] and body["scopes"] == ["read", "move"]
    assert body["key"].startswith(body["prefix"]) and body["replayed"] is False
    key = body["key"]
    assert isinstance(key, str) and len(key) >= 32
    assert (await api.account(account["id"], key=key))["id"] == account["id"]
    second = await api.create_key(account["id"])
    assert second != key  # a new key each time; the first one is never shown again
    assert (await api.account(account["id"], key=second))["id"] == account["id"]
    assert key not in (await api.get(f"/v1/accounts/{account['id']}")).text


# ---- money -----------------------------------------------------------------------------------


async def test_credit_and_debit(api: Api) -> None:
    account = await api.create_account()
    reply = await api.credit(account["id"], 1_000, id="c-1", description="top up", metadata={"ref": "x"})
    assert set(reply) == {"transaction", "account"}
    txn, after = reply["transaction"], reply["account"]
    assert set(txn) >= TXN_FIELDS
    assert (txn["operation_id"], txn["kind"], txn["account_id"], txn["amount"], txn["currency"]) == (
        "c-1",
        "credit",
        account["id"],
        1_000,
        "USD",
    )
    assert (txn["balance_after"], txn["reserved_after"], txn["metadata"]) == (1_000, 0, {"ref": "x"})
    assert txn["version"] == after["version"]
    assert txn["hold_id"] is None
    assert (after["balance"], after["reserved"], after["available"]) == (1_000, 0, 1_000)
    assert after["version"] > account["version"]
    reply = await api.debit(account["id"], 400, id="d-1")
    assert (reply["transaction"]["kind"], reply["transaction"]["amount"], reply["transaction"]["balance_after"]) == (
        "debit",
        400,
        600,
    )
    assert (reply["account"]["balance"], reply["account"]["available"]) == (600, 600)
    assert reply["account"]["version"] > after["version"]
    assert await api.account(account["id"]) == reply["account"]


async def test_debit_may_use_the_credit_limit(api: Api) -> None:
    account = await api.create_account(credit_limit=300)
    reply = await api.debit(account["id"], 300)
    assert (reply["account"]["balance"], reply["account"]["available"]) == (-300, 0)
    response = await api.post(f"/v1/accounts/{account['id']}/debits", {"id": api.op_id(), "amount": 1})
    api.assert_problem(response, 422, "insufficient_funds")


async def test_transfers_between_parent_and_child(api: Api) -> None:
    parent = await api.create_account()
    child = await api.create_account(parent["id"], kind="user")
    await api.credit(parent["id"], 1_000)
    down = await api.transfer(parent["id"], child["id"], 300, id="t-down")
    assert set(down) == {"transaction", "accounts"}
    assert [a["id"] for a in down["accounts"]] == [parent["id"], child["id"]]
    assert [a["balance"] for a in down["accounts"]] == [700, 300]
    txn = down["transaction"]
    assert (txn["operation_id"], txn["kind"], txn["account_id"], txn["counterparty_account_id"], txn["amount"]) == (
        "t-down", "transfer", parent["id"], child["id"], 300)  # fmt: skip
    up = await api.transfer(child["id"], parent["id"], 100, id="t-up")
    assert [a["balance"] for a in up["accounts"]] == [200, 800]
    assert (await api.account(parent["id"]))["balance"] == 800
    assert (await api.account(child["id"]))["balance"] == 200
    # Both legs are in both histories.
    child_history = await api.history(child["id"])
    assert [(t["operation_id"], t["counterparty_account_id"], t["balance_after"]) for t in child_history] == [
        ("t-up", parent["id"], 200), ("t-down", parent["id"], 300)]  # fmt: skip


async def test_hold_capture_in_full_to_destination(api: Api) -> None:
    payer = await api.create_account()
    merchant = await api.create_account()
    await api.credit(payer["id"], 1_000)
    placed = await api.hold(payer["id"], 250, id="order-1", destination_account_id=merchant["id"], metadata={"o": 1})
    assert set(placed) == {"hold", "account"}
    hold = placed["hold"]
    assert set(hold) >= HOLD_FIELDS
    assert (hold["id"], hold["account_id"], hold["amount"], hold["captured_amount"], hold["status"]) == (
        "order-1", payer["id"], 250, 0, "pending")  # fmt: skip
    assert (hold["currency"], hold["destination_account_id"], hold["metadata"]) == ("USD", merchant["id"], {"o": 1})
    expires_in = parse_time(hold["expires_at"]) - parse_time(hold["created_at"])
    assert expires_in.total_seconds() == 900  # the default
    assert (placed["account"]["balance"], placed["account"]["reserved"], placed["account"]["available"]) == (
        1_000,
        250,
        750,
    )
    assert await api.get_hold(payer["id"], "order-1") == hold

    captured = await api.capture(payer["id"], "order-1")
    assert (captured["hold"]["status"], captured["hold"]["captured_amount"]) == ("captured", 250)
    assert (captured["account"]["balance"], captured["account"]["reserved"], captured["account"]["available"]) == (
        750,
        0,
        750,
    )
    assert (await api.account(merchant["id"]))["balance"] == 250
    assert await api.get_hold(payer["id"], "order-1") == captured["hold"]
    kinds = [t["kind"] for t in await api.history(payer["id"])]
    assert kinds == ["capture", "hold", "credit"]


async def test_hold_capture_in_part_releases_the_rest(api: Api) -> None:
    payer = await api.create_account()
    await api.credit(payer["id"], 1_000)
    await api.hold(payer["id"], 400, id="order-2", expires_in_s=60)
    captured = await api.capture(payer["id"], "order-2", 150)
    assert (captured["hold"]["status"], captured["hold"]["amount"], captured["hold"]["captured_amount"]) == (
        "captured",
        400,
        150,
    )
    # Without a destination, the money goes to settlement; the rest is free again.
    assert (captured["account"]["balance"], captured["account"]["reserved"], captured["account"]["available"]) == (
        850,
        0,
        850,
    )
    assert (await api.get_hold(payer["id"], "order-2"))["captured_amount"] == 150


async def test_hold_release(api: Api) -> None:
    payer = await api.create_account()
    await api.credit(payer["id"], 100)
    await api.hold(payer["id"], 100, id="order-3")
    assert (await api.account(payer["id"]))["available"] == 0
    released = await api.release(payer["id"], "order-3")
    assert (released["hold"]["status"], released["hold"]["captured_amount"]) == ("released", 0)
    assert (released["account"]["balance"], released["account"]["reserved"], released["account"]["available"]) == (
        100,
        0,
        100,
    )
    assert (await api.get_hold(payer["id"], "order-3"))["status"] == "released"
    # Releasing again with the same (empty) body replays the first answer.
    again = await api.post(f"/v1/accounts/{payer['id']}/holds/order-3/release")
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == released
    # Capturing a released hold is refused.
    response = await api.post(f"/v1/accounts/{payer['id']}/holds/order-3/capture", {})
    api.assert_problem(response, 409, "hold_not_pending")


async def test_capture_replay_and_conflicting_capture(api: Api) -> None:
    payer = await api.create_account()
    await api.credit(payer["id"], 100)
    await api.hold(payer["id"], 100, id="order-4")
    first = await api.post(f"/v1/accounts/{payer['id']}/holds/order-4/capture", {"amount": 60})
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = await api.post(f"/v1/accounts/{payer['id']}/holds/order-4/capture", {"amount": 60})
    assert (again.status_code, again.headers["idempotent-replayed"], again.content) == (200, "true", first.content)
    other = await api.post(f"/v1/accounts/{payer['id']}/holds/order-4/capture", {"amount": 70})
    api.assert_problem(other, 409, "hold_not_pending")
    assert (await api.account(payer["id"]))["balance"] == 40


# ---- history ---------------------------------------------------------------------------------


async def test_history_cursor_pagination_newest_first_without_gaps(api: Api) -> None:
    account = await api.create_account()
    other = await api.create_account()
    for i in range(12):
        await api.credit(account["id"], 10 + i, id=f"c-{i}")
        if i % 3 == 0:
            await api.debit(account["id"], 5, id=f"d-{i}")
        if i % 4 == 0:
            await api.transfer(account["id"], other["id"], 1, id=f"t-{i}")
    await api.hold(account["id"], 7, id="h-1")
    full = await api.history(account["id"], limit=1000)
    assert len(full) == 12 + 4 + 3 + 1
    for txn in full:
        assert set(txn) >= TXN_FIELDS
        assert txn["account_id"] == account["id"]
    versions = [txn["version"] for txn in full]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)  # newest first
    assert full[0]["operation_id"] == "h-1" and full[-1]["operation_id"] == "c-0"
    for limit in (1, 3, 7, 20, 100):
        paged = await api.history(account["id"], limit=limit)
        assert paged == full, f"limit={limit}"
    # One page by hand: next_cursor is given while a page is full.
    response = await api.get(f"/v1/accounts/{account['id']}/transactions", params={"limit": "5"})
    page = response.json()
    assert len(page["data"]) == 5 and isinstance(page["next_cursor"], str)
    response = await api.get(
        f"/v1/accounts/{account['id']}/transactions", params={"limit": "5", "cursor": page["next_cursor"]}
    )
    assert response.json()["data"] == full[5:10]


async def test_history_since_until(api: Api) -> None:
    account = await api.create_account()
    for i in range(10):
        await api.credit(account["id"], 1 + i, id=f"c-{i}")
        await asyncio.sleep(0.002)  # distinct timestamps
    full = await api.history(account["id"])
    times = [parse_time(t["created_at"]) for t in full]
    since, until = full[7]["created_at"], full[2]["created_at"]  # older and newer bounds
    expected = [t for t, at in zip(full, times, strict=True) if parse_time(since) <= at < parse_time(until)]
    assert expected, "the window must not be empty"
    for limit in (1, 2, 1000):
        got = await api.history(account["id"], limit=limit, since=since, until=until)
        assert got == expected, f"limit={limit}"
    assert await api.history(account["id"], since=since) == [
        t for t, at in zip(full, times, strict=True) if at >= parse_time(since)
    ]
    assert await api.history(account["id"], until=until) == [
        t for t, at in zip(full, times, strict=True) if at < parse_time(until)
    ]
    # Other offsets than Z are understood.
    shifted = parse_time(since).astimezone(datetime.fromisoformat("2000-01-01T00:00:00+02:00").tzinfo).isoformat()
    assert await api.history(account["id"], since=shifted, until=until) == expected
    assert await api.history(account["id"], since="2999-01-01T00:00:00Z") == []


async def test_rejected_operations_are_not_in_history(api: Api) -> None:
    account = await api.create_account()
    await api.credit(account["id"], 10, id="ok")
    response = await api.post(f"/v1/accounts/{account['id']}/debits", {"id": "too-much", "amount": 11})
    api.assert_problem(response, 422, "insufficient_funds")
    assert [t["operation_id"] for t in await api.history(account["id"])] == ["ok"]


# ---- batch -----------------------------------------------------------------------------------


async def test_batch_mixed_operations_in_order(api: Api) -> None:
    a = await api.create_account()
    b = await api.create_account(a["id"], kind="user")
    ops: list[dict[str, Any]] = [
        {"op": "credit", "account_id": a["id"], "id": "b-c1", "amount": 100},
        {"op": "debit", "account_id": a["id"], "id": "b-d1", "amount": 100},  # needs the credit first
        {"op": "debit", "account_id": a["id"], "id": "b-d2", "amount": 1},  # fails: nothing left
        {"op": "credit", "account_id": a["id"], "id": "b-c2", "amount": 500},
        {
            "op": "transfer",
            "id": "b-t1",
            "from_account_id": a["id"],
            "to_account_id": b["id"],
            "amount": 200,
            "currency": "USD",
        },
        {"op": "hold", "account_id": a["id"], "id": "b-h1", "amount": 50},
        {"op": "capture", "account_id": a["id"], "hold_id": "b-h1", "amount": 20},
        {"op": "hold", "account_id": b["id"], "id": "b-h2", "amount": 30, "destination_account_id": a["id"]},
        {"op": "release", "account_id": b["id"], "hold_id": "b-h2"},
        {"op": "credit", "account_id": "US-0-doesnotexist", "id": "b-c3", "amount": 1},
        {"op": "credit", "account_id": a["id"], "id": "b-c4", "amount": 0},  # invalid shape
        {"op": "capture", "account_id": a["id"], "hold_id": "nope"},
        {"op": "credit", "account_id": b["id"], "id": "b-c5", "amount": 5},
    ]
    response = await api.post("/v1/batch", {"operations": ops})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    results = response.json()["results"]
    assert len(results) == len(ops)
    assert [r["status"] for r in results] == [201, 201, 422, 201, 201, 201, 200, 201, 200, 404, 422, 404, 201]
    assert results[0]["body"]["transaction"]["operation_id"] == "b-c1"
    assert results[1]["body"]["transaction"]["operation_id"] == "b-d1"
    api.assert_problem_body(results[2]["body"], 422, "insufficient_funds")
    assert results[4]["body"]["transaction"]["kind"] == "transfer"
    assert results[5]["body"]["hold"]["status"] == "pending"
    assert (results[6]["body"]["hold"]["status"], results[6]["body"]["hold"]["captured_amount"]) == ("captured", 20)
    assert results[7]["body"]["hold"]["destination_account_id"] == a["id"]
    assert results[8]["body"]["hold"]["status"] == "released"
    api.assert_problem_body(results[9]["body"], 404, "account_not_found")
    api.assert_problem_body(results[10]["body"], 422, "validation_error")
    api.assert_problem_body(results[11]["body"], 404, "hold_not_found")
    assert results[12]["body"]["account"]["balance"] == 205
    # Same account, in order: versions of A grow along the batch.
    a_versions = [r["body"]["account"]["version"] for r in results[:2]] + [
        results[3]["body"]["account"]["version"], results[4]["body"]["accounts"][0]["version"],
        results[5]["body"]["account"]["version"], results[6]["body"]["account"]["version"],
    ]  # fmt: skip
    assert a_versions == sorted(a_versions) and len(set(a_versions)) == len(a_versions)
    assert (await api.account(a["id"]))["balance"] == 100 - 100 + 500 - 200 - 20
    assert (await api.account(b["id"]))["balance"] == 205
    # The batch's operations are ordinary operations: replaying one alone answers the same.
    alone = await api.post(f"/v1/accounts/{a['id']}/credits", {"id": "b-c2", "amount": 500})
    assert alone.status_code == 201 and alone.headers["idempotent-replayed"] == "true"
    assert alone.json() == results[3]["body"]


async def test_batch_many_operations_on_one_account_apply_in_order(api: Api) -> None:
    account = await api.create_account()
    ops: list[dict[str, Any]] = []
    for i in range(200):
        ops.append({"op": "credit", "account_id": account["id"], "id": f"c{i}", "amount": 1})
        ops.append({"op": "debit", "account_id": account["id"], "id": f"d{i}", "amount": 1})
    response = await api.post("/v1/batch", {"operations": ops})
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201] * 400  # each debit sees the credit before it
    assert [r["body"]["account"]["balance"] for r in results] == [1, 0] * 200
    assert (await api.account(account["id"]))["balance"] == 0


# ---- idempotency -----------------------------------------------------------------------------


async def _replayed(api: Api, method: str, url: str, body: dict[str, Any], status: int) -> bytes:
    first = await api.request(method, url, json=body)
    assert first.status_code == status, first.text
    assert "idempotent-replayed" not in first.headers
    again = await api.request(method, url, json=body)
    assert again.status_code == status
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    return first.content


async def test_idempotent_replays_answer_the_first_outcome(api: Api) -> None:
    a = await api.create_account()
    b = await api.create_account()
    credit = {"id": "same-1", "amount": 500, "description": "d", "metadata": {"k": "v"}}
    await _replayed(api, "POST", f"/v1/accounts/{a['id']}/credits", credit, 201)
    await _replayed(api, "POST", f"/v1/accounts/{a['id']}/debits", {"id": "same-d", "amount": 100}, 201)
    transfer = {"id": "same-t", "from_account_id": a["id"], "to_account_id": b["id"], "amount": 50, "currency": "USD"}
    await _replayed(api, "POST", "/v1/transfers", transfer, 201)
    await _replayed(api, "POST", f"/v1/accounts/{a['id']}/holds", {"id": "same-h", "amount": 10}, 201)
    await _replayed(api, "POST", f"/v1/accounts/{a['id']}/holds/same-h/capture", {"amount": 5}, 200)
    # A refusal is an outcome too: replaying it answers the same refusal.
    body = await _replayed(api, "POST", f"/v1/accounts/{a['id']}/debits", {"id": "too-big", "amount": 10**6}, 422)
    assert json.loads(body)["code"] == "insufficient_funds"
    # The money moved once.
    assert (await api.account(a["id"]))["balance"] == 500 - 100 - 50 - 5
    assert (await api.account(b["id"]))["balance"] == 50
    # The same id with another body is a conflict, and changes nothing.
    before = await api.snapshot(a["id"], b["id"])
    response = await api.post(f"/v1/accounts/{a['id']}/credits", {**credit, "amount": 501})
    api.assert_problem(response, 409, "idempotency_conflict")
    response = await api.post(f"/v1/accounts/{a['id']}/credits", {**credit, "metadata": {"k": "w"}})
    api.assert_problem(response, 409, "idempotency_conflict")
    response = await api.post("/v1/transfers", {**transfer, "to_account_id": a["id"], "from_account_id": b["id"]})
    assert response.status_code == 201  # keyed by the source account: another operation
    response = await api.post("/v1/transfers", {**transfer, "amount": 51})
    api.assert_problem(response, 409, "idempotency_conflict")
    # The id is per account (one for every kind): fresh on another account, taken for another kind.
    response = await api.post(f"/v1/accounts/{a['id']}/debits", {"id": "same-1", "amount": 1})
    api.assert_problem(response, 409, "idempotency_conflict")
    await api.credit(b["id"], 1, id="same-1")
    after = await api.snapshot(a["id"])
    assert after[a["id"]]["history"][1:] == before[a["id"]]["history"]


async def test_replay_after_restart(make_api: MakeApi) -> None:
    async with make_api() as api:
        account = await api.create_account()
        first = await api.post(f"/v1/accounts/{account['id']}/credits", {"id": "r-1", "amount": 42})
        key = await api.create_key(account["id"], scopes=["read", "move", "funds"])  # credits need funds
    async with make_api() as api:
        again = await api.post(f"/v1/accounts/{account['id']}/credits", {"id": "r-1", "amount": 42}, key=key)
        assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
        assert again.content == first.content
        assert (await api.account(account["id"], key=key))["balance"] == 42
        response = await api.post(f"/v1/accounts/{account['id']}/credits", {"id": "r-1", "amount": 43})
        api.assert_problem(response, 409, "idempotency_conflict")


# ---- operations ------------------------------------------------------------------------------


async def test_healthz_and_readyz(api: Api) -> None:
    response = await api.get("/healthz", key=None)
    assert response.status_code == 200
    response = await api.get("/readyz", key=None)
    assert response.status_code == 200
    assert response.json()["ready"] is True
    assert "retry-after" not in response.headers


async def test_metrics_prometheus_text(api: Api) -> None:
    account = await api.create_account()
    await api.credit(account["id"], 5)
    await api.post(f"/v1/accounts/{account['id']}/debits", {"id": api.op_id(), "amount": 6})
    response = await api.get("/metrics", key=None)
    assert response.status_code == 200
    assert response.headers.get_list("content-type") == ["text/plain; version=0.0.4"]
    text = response.text
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in ("balance_operations_total", "balance_request_seconds_bucket", "balance_batch_commands_bucket",
                 "balance_queue_depth", "balance_recovery_seconds", "balance_commit_seconds_bucket",
                 "balance_commit_busy_seconds_total"):  # fmt: skip
        assert name in samples, name
    families = {name.removesuffix("_total") for name in re.findall(r"^# TYPE (balance_\w+) ", text, re.M)}
    assert {"balance_operations", "balance_commit_failures", "balance_holds_expired", "balance_shard_ready"} <= families
    assert re.search(r'^balance_request_seconds_count\{route="/v1/accounts/\{id\}/credits"\} [1-9]', text, re.M)
    for line in text.splitlines():  # every sample line is "name{labels} value"
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+", line), line


async def test_openapi_document(api: Api) -> None:
    response = await api.get("/openapi.json", key=None)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = json.loads(response.content)
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"] and document["info"]["version"]
    for method, path in CONTRACT_ROUTES:
        assert path in document["paths"], path
        assert method in document["paths"][path], (method, path)
    # Every $ref resolves.
    schemas = document["components"]["schemas"]
    refs = re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', response.text)
    assert refs and all(ref in schemas for ref in refs)
    for name in ("Account", "Hold", "Txn", "Problem"):
        assert name in schemas or any(name in key for key in schemas), name


async def test_errors_are_problem_json(api: Api) -> None:
    response = await api.get("/v1/accounts/US-0-0000000000000000")
    body = api.assert_problem(response, 404, "account_not_found")
    assert response.headers["content-type"] == api.problem_type
    assert "US-0-0000000000000000" in body["detail"]
    response = await api.get("/v1/accounts/x", key="wrong")
    api.assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_not_started_service_answers_503_with_retry_after(make_api: MakeApi) -> None:
    async with make_api(start=False) as api:
        response = await api.get("/healthz", key=None)
        assert response.status_code == 200
        response = await api.get("/readyz", key=None)
        body = api.assert_problem(response, 503, "unavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert body["ready"] is False and set(body["shards"]) == {"0"}
        requests = [
            ("POST", "/v1/accounts", {"kind": "partner", "region": "US", "currency": "USD"}),
            ("GET", "/v1/accounts/US-0-0000000000000000", None),
            ("POST", "/v1/accounts/US-0-0000000000000000/credits", {"id": "x", "amount": 1}),
            ("POST", "/v1/accounts/US-0-0000000000000000/debits", {"id": "x", "amount": 1}),
            ("POST", "/v1/accounts/US-0-0000000000000000/holds", {"id": "x", "amount": 1}),
            (
                "POST",
                "/v1/transfers",
                {"id": "x", "from_account_id": "US-0-a", "to_account_id": "US-0-b", "amount": 1, "currency": "USD"},
            ),  # fmt: skip
            ("POST", "/v1/batch", {"operations": [{"op": "credit", "account_id": "US-0-a", "id": "x", "amount": 1}]}),
            ("GET", "/v1/accounts/US-0-0000000000000000/transactions", None),
        ]
        for method, url, body in requests:
            response = await api.request(method, url, json=body)
            api.assert_problem(response, 503, "unavailable")
            assert int(response.headers["retry-after"]) >= 1


async def test_partner_key_while_recovering_is_503_not_401(make_api: MakeApi) -> None:
    """Keys are loaded during recovery: until then a valid partner key must not look unknown."""
    async with make_api() as api:
        account = await api.create_account()
        key = await api.create_key(account["id"])
    async with make_api(start=False) as api:
        response = await api.get(f"/v1/accounts/{account['id']}", key=key)
        api.assert_problem(response, 503, "unavailable")
        assert int(response.headers["retry-after"]) >= 1
        response = await api.post(f"/v1/accounts/{account['id']}/credits", {"id": "x", "amount": 1}, key=key)
        api.assert_problem(response, 503, "unavailable")
        await api.service.start()
        assert (await api.account(account["id"], key=key))["id"] == account["id"]


# ---- two shards ------------------------------------------------------------------------------


async def test_two_shards_spread_and_route(api2: Api) -> None:
    response = await api2.get("/readyz", key=None)
    assert response.status_code == 200 and set(response.json()["shards"]) == {"0", "1"}
    tops = [await api2.create_account(name=f"t{i}") for i in range(6)]
    shards = [shard_of(t["id"]) for t in tops]
    assert set(shards) == {0, 1}, shards
    assert min(shards.count(0), shards.count(1)) >= 2  # spread, not all but one on a shard
    for top in tops:
        shard = shard_of(top["id"])
        assert shard is not None
        assert api2.service.engines[shard].account_state(top["id"]) is not None
        assert api2.service.engines[1 - shard].account_state(top["id"]) is None
        child = await api2.create_account(top["id"], kind="user")
        assert shard_of(child["id"]) == shard  # a child lives on its parent's shard
        await api2.credit(top["id"], 100)
        reply = await api2.transfer(top["id"], child["id"], 40)
        assert [a["balance"] for a in reply["accounts"]] == [60, 40]
        await api2.hold(child["id"], 10, id="h")
        assert (await api2.capture(child["id"], "h"))["account"]["balance"] == 30
        assert (await api2.account(top["id"]))["balance"] == 60
        children = (await api2.get(f"/v1/accounts/{top['id']}/children")).json()["data"]
        assert [c["id"] for c in children] == [child["id"]]
        assert [t["kind"] for t in await api2.history(child["id"])] == ["capture", "hold", "transfer"]
    # A batch over both shards: every result is answered, in order.
    ops = [{"op": "credit", "account_id": t["id"], "id": "batch-1", "amount": i + 1} for i, t in enumerate(tops)]
    results = (await api2.post("/v1/batch", {"operations": ops})).json()["results"]
    assert [r["body"]["account"]["id"] for r in results] == [t["id"] for t in tops]
    assert [r["body"]["account"]["balance"] for r in results] == [60 + i + 1 for i in range(len(tops))]
    # An id naming a shard that does not exist is simply not found.
    response = await api2.get("/v1/accounts/US-7-0000000000000000")
    api2.assert_problem(response, 404, "account_not_found")


async def test_transfer_across_shards(api2: Api) -> None:
    tops = [await api2.create_account() for _ in range(2)]
    assert {shard_of(t["id"]) for t in tops} == {0, 1}
    await api2.credit(tops[0]["id"], 100)
    reply = await api2.transfer(tops[0]["id"], tops[1]["id"], 30, id="x-1")
    assert [a["balance"] for a in reply["accounts"]] == [70, 30]
    # Both legs are durable and visible on their own shards, once each, even when replayed.
    again = await api2.post(
        "/v1/transfers",
        {"id": "x-1", "from_account_id": tops[0]["id"], "to_account_id": tops[1]["id"], "amount": 30, "currency": "USD"},
    )  # fmt: skip
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true" and again.json() == reply
    source, target = await api2.account(tops[0]["id"]), await api2.account(tops[1]["id"])
    assert (source["balance"], source["available"], target["balance"], target["available"]) == (70, 70, 30, 30)
    assert [(row["operation_id"], row["amount"]) for row in await api2.history(tops[1]["id"])] == [("x-1", 30)]
    assert [row["balance_after"] for row in await api2.history(tops[0]["id"])] == [70, 100]


async def test_raising_the_credit_limit_of_an_exhausted_account_lets_it_hold_again(api: Api) -> None:
    account = await api.create_account()
    await api.credit(account["id"], 100)
    placed = await api.hold(account["id"], 100)
    assert placed["account"]["exhausted"] is True
    patched = await api.patch_account(account["id"], credit_limit=50)
    assert patched["available"] == 50
    response = await api.post(f"/v1/accounts/{account['id']}/holds", {"id": api.op_id(), "amount": 10})
    assert response.status_code == 201, response.text  # API.md: insufficient_funds only when available < amount


async def test_a_batch_answers_every_kind_of_route_in_order(api2: Api) -> None:
    """One collector answers a batch whose ops go to two shards, across shards (a task of its
    own), and to a shard that does not exist: each result in its place."""
    tops = [await api2.create_account() for _ in range(2)]
    assert {shard_of(t["id"]) for t in tops} == {0, 1}
    ops = [
        {"op": "credit", "account_id": tops[0]["id"], "id": "c1", "amount": 100},
        {"op": "transfer", "id": "t1", "from_account_id": tops[0]["id"], "to_account_id": tops[1]["id"],
         "amount": 30, "currency": "USD"},
        {"op": "credit", "account_id": "US-7-0000000000000000", "id": "c2", "amount": 5},
        {"op": "hold", "account_id": tops[1]["id"], "id": "h1", "amount": 10, "expires_in_s": 600},
    ]  # fmt: skip
    results = (await api2.post("/v1/batch", {"operations": ops})).json()["results"]
    assert [r["status"] for r in results[:3]] == [201, 201, 404]
    assert results[0]["body"]["account"]["balance"] == 100
    assert [a["balance"] for a in results[1]["body"]["accounts"]] == [70, 30]
    assert results[2]["body"]["code"] == "account_not_found"
    # The hold on the target was queued before the transfer's second leg reached it: it was
    # refused or accepted on the target's state at that moment, never half-applied.
    hold = results[3]
    assert (hold["status"], hold["body"].get("code")) in ((201, None), (422, "insufficient_funds")), hold
    assert (await api2.account(tops[1]["id"]))["balance"] == 30
