"""History rows have their own ids, a direction and the client's operation id; one client id
per account across credits, debits, transfers and holds; one row read by its id
(issue 14 item 7)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.e2e.conftest import Api, MakeApi

TXN_ID = re.compile(r"^(US|EU|ASIA)-(\d+)-t(\d+)$")


def prefix(account_id: str) -> str:
    return "-".join(account_id.split("-")[:2]) + "-t"


async def test_every_row_has_its_own_id_naming_region_and_shard(api: Api) -> None:
    p = (await api.create_account(name="P"))["id"]
    c = (await api.create_account(p, kind="user", name="C"))["id"]
    e = (await api.create_account(region="EU", currency="EUR", name="E"))["id"]
    await api.credit(p, 1_000, id="x")
    await api.credit(e, 50, id="x")  # the same client id on another account: its own operation
    await api.transfer(p, c, 100, id="t1")
    await api.hold(p, 300, id="h1", destination_account_id=c)
    captured = await api.capture(p, "h1", 120)
    await api.hold(p, 10, id="h2")
    await api.release(p, "h2")
    rows = {a: await api.history(a) for a in (p, c, e)}
    every = [row for history in rows.values() for row in history]
    assert len({row["id"] for row in every}) == len(every) == 9
    for account_id, history in rows.items():
        for row in history:
            assert TXN_ID.match(row["id"]) and row["id"].startswith(prefix(account_id)), row
    by_op = {(row["account_id"], row["kind"], row["operation_id"]): row for row in every}
    assert by_op[(e, "credit", "x")]["id"].startswith("EU-")
    # A hold and its capture: two rows, two ids, the hold's id in operation_id and hold_id.
    hold_row, capture_row = by_op[(p, "hold", "h1")], by_op[(p, "capture", "h1")]
    assert hold_row["id"] != capture_row["id"]
    assert hold_row["hold_id"] == capture_row["hold_id"] == "h1"
    assert captured["hold"]["captured_amount"] == 120
    directions = {(row["account_id"], row["kind"], row["operation_id"]): row["direction"] for row in every}
    assert directions == {
        (p, "credit", "x"): "credit", (e, "credit", "x"): "credit",
        (p, "transfer", "t1"): "debit", (c, "transfer", "t1"): "credit",
        (p, "hold", "h1"): "debit", (p, "capture", "h1"): "debit", (c, "capture", "h1"): "credit",
        (p, "hold", "h2"): "debit", (p, "release", "h2"): "credit",
    }  # fmt: skip
    # The two sides of the transfer: two ids, one operation id.
    assert by_op[(p, "transfer", "t1")]["id"] != by_op[(c, "transfer", "t1")]["id"]


async def test_a_client_id_is_one_operation_per_account(api: Api) -> None:
    p = (await api.create_account(name="P"))["id"]
    c = (await api.create_account(p, kind="user", name="C"))["id"]
    first = await api.credit(p, 100, id="x")
    before = await api.snapshot(p, c)
    attempts = [
        (f"/v1/accounts/{p}/debits", {"id": "x", "amount": 10}),
        ("/v1/transfers", {"id": "x", "from_account_id": p, "to_account_id": c, "amount": 1, "currency": "USD"}),
        (f"/v1/accounts/{p}/holds", {"id": "x", "amount": 1}),
    ]
    for url, body in attempts:
        api.assert_problem(await api.post(url, body), 409, "idempotency_conflict")
    assert await api.snapshot(p, c) == before
    again = await api.post(f"/v1/accounts/{p}/credits", {"id": "x", "amount": 100})
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first
    # A transfer claims its id on its source only: the target may still use it.
    await api.transfer(p, c, 5, id="y")
    await api.credit(c, 1, id="y")
    api.assert_problem(
        await api.post(f"/v1/accounts/{p}/debits", {"id": "y", "amount": 1}), 409, "idempotency_conflict"
    )


async def test_a_row_is_read_by_its_id_with_the_account_s_access(api: Api) -> None:
    p = (await api.create_account(name="P"))["id"]
    c = (await api.create_account(p, kind="user", name="C"))["id"]
    s = (await api.create_account(p, kind="user", name="S"))["id"]
    await api.credit(p, 1_000)
    answer = await api.transfer(p, c, 10, id="t1")
    await api.credit(s, 7)
    history = await api.history(c)
    (row,) = history
    assert answer["transaction"]["id"] == (await api.history(p))[0]["id"]  # the answer names the source's row
    response = await api.get(f"/v1/accounts/{c}/transactions/{row['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == row
    child_key = await api.create_key(c)
    assert (await api.get(f"/v1/accounts/{c}/transactions/{row['id']}", key=child_key)).json() == row
    s_row = (await api.history(s))[0]["id"]
    api.assert_problem(await api.get(f"/v1/accounts/{s}/transactions/{s_row}", key=child_key), 403, "forbidden")
    source_row = (await api.history(p))[0]["id"]
    for wanted in (source_row, s_row, prefix(c) + "999999", "nope", prefix(c) + "1x", prefix(c)):
        response = await api.get(f"/v1/accounts/{c}/transactions/{wanted}")
        api.assert_problem(response, 404, "transaction_not_found")


async def test_row_ids_survive_a_restart_and_cross_shard_rows_name_their_shards(
    make_api: MakeApi, tmp_path: Path
) -> None:
    async with make_api(shards=2, data_dir=tmp_path) as api:
        a = (await api.create_account(name="A"))["id"]
        b = (await api.create_account(name="B"))["id"]
        assert a.split("-")[1] != b.split("-")[1]  # the least-filled shard: one each
        await api.credit(a, 100, id="c1")
        await api.transfer(a, b, 30, id="t1")
        before: dict[str, Any] = {x: await api.history(x) for x in (a, b)}
    assert before[a][0]["id"].startswith(prefix(a)) and before[b][0]["id"].startswith(prefix(b))
    assert (before[a][0]["direction"], before[b][0]["direction"]) == ("debit", "credit")
    assert before[a][0]["operation_id"] == before[b][0]["operation_id"] == "t1"
    async with make_api(shards=2, data_dir=tmp_path) as api:
        assert {x: await api.history(x) for x in (a, b)} == before
        for x in (a, b):
            for row in before[x]:
                assert (await api.get(f"/v1/accounts/{x}/transactions/{row['id']}")).json() == row


async def test_account_creation_under_a_client_id_replays(make_api: MakeApi, tmp_path: Path) -> None:
    async with make_api(shards=2, data_dir=tmp_path) as api:
        top = {"kind": "partner", "region": "US", "currency": "USD", "name": "P", "client_id": "p-1"}
        first = await api.post("/v1/accounts", top)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        p = first.json()["id"]
        again = await api.post("/v1/accounts", top)
        assert (again.status_code, again.headers.get("idempotent-replayed"), again.json()) == (
            201,
            "true",
            first.json(),
        )
        for changed in ({**top, "name": "other"}, {**top, "region": "EU"}):
            api.assert_problem(await api.post("/v1/accounts", changed), 409, "idempotency_conflict")
        child = {"kind": "user", "parent_id": p, "name": "C", "client_id": "c-1"}
        c1 = await api.post("/v1/accounts", child)
        assert c1.status_code == 201 and c1.json()["id"].split("-")[1] == p.split("-")[1]  # the parent's shard
        other_parent = (await api.create_account(name="Q"))["id"]
        c2 = await api.post("/v1/accounts", {**child, "parent_id": other_parent})  # ids are scoped per parent
        assert c2.status_code == 201 and c2.json()["id"] != c1.json()["id"]
        await api.credit(c1.json()["id"], 5)
        assert [row["kind"] for row in await api.history(c1.json()["id"])] == ["credit"]  # no row for the creation
        accounts = sum(len(engine.ledger.accounts) for engine in api.service.engines)
    async with make_api(shards=2, data_dir=tmp_path) as api:  # after a restart: the first answers, from storage
        replay = await api.post("/v1/accounts", child)
        assert (replay.status_code, replay.headers.get("idempotent-replayed")) == (201, "true")
        assert replay.json() == c1.json()
        assert (await api.post("/v1/accounts", top)).json() == first.json()
        api.assert_problem(await api.post("/v1/accounts", {**child, "kind": "provider"}), 409, "idempotency_conflict")
        assert sum(len(engine.ledger.accounts) for engine in api.service.engines) == accounts
