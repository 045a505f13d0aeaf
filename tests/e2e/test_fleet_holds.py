"""Holds and batches across nodes, on real processes: node a owns shard 0 (the payers), node b
shard 1 (the merchants), SQLite files (``fleet_nodes``).

A hold on a's shard naming an account of b's shard is marked on b before it is placed (a close
of the merchant answers ``account_not_empty`` meanwhile), captured payer → transit → merchant
through b's internal leg, released; a replay gives the first answer; after a SIGKILL of b the
marks come back (b asks a) and a capture whose target leg was cut is finished exactly once.
A batch spanning both nodes is answered per operation in order. At the end the nodes stop and
the shard files are recovered afresh: each shard's invariants hold (reserved equals its
pending holds) and each currency sums to zero over the fleet."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fleet_nodes import Fleet, fleet_books, new_account


def balance(client: httpx.Client, account: str) -> dict[str, Any]:
    r = client.get(f"/v1/accounts/{account}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def close(client: httpx.Client, account: str) -> httpx.Response:
    return client.patch(f"/v1/accounts/{account}", json={"status": "closed"})


def settled_close(client: httpx.Client, account: str, want: int, within_s: float = 10) -> httpx.Response:
    """A close, sent again while the node is still counting the fleet's holds (503), until it
    answers ``want`` (or the time is up: the last answer)."""
    deadline = time.monotonic() + within_s
    while (r := close(client, account)).status_code != want and time.monotonic() < deadline:
        assert r.status_code in (503, 409), r.text
        time.sleep(0.1)
    return r


def test_a_hold_across_nodes_is_placed_captured_and_released_with_the_books_balanced(fleet: Fleet) -> None:
    with fleet.client("a") as a, fleet.client("b") as b:
        payer, merchant, other = new_account(a, 0), new_account(a, 1), new_account(a, 1)
        assert a.post(f"/v1/accounts/{payer}/credits", json={"id": "c1", "amount": 1000}).status_code == 201

        hold = {"id": "order-1", "amount": 300, "destination_account_id": merchant}
        placed = a.post(f"/v1/accounts/{payer}/holds", json=hold)
        assert placed.status_code == 201, placed.text
        assert placed.json()["hold"]["status"] == "pending"
        assert placed.json()["account"]["reserved"] == 300
        # The same id again, through either node (b forwards it to a): the first answer.
        for via in (a, b):
            again = via.post(f"/v1/accounts/{payer}/holds", json=hold)
            assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true", again.text
            assert again.content == placed.content
        # The merchant has nothing, but a pending hold names it: its node refuses to close it.
        refused = settled_close(b, merchant, 409)
        assert refused.status_code == 409 and refused.json()["code"] == "account_not_empty", refused.text
        assert settled_close(a, merchant, 409).status_code == 409  # through a: forwarded to b, same

        captured = a.post(f"/v1/accounts/{payer}/holds/order-1/capture", json={"amount": 200})
        assert captured.status_code == 200, captured.text
        assert captured.json()["hold"]["status"] == "captured" and captured.json()["hold"]["captured_amount"] == 200
        assert (balance(a, payer)["balance"], balance(a, payer)["reserved"]) == (800, 0)
        assert balance(b, merchant)["balance"] == 200
        again = b.post(f"/v1/accounts/{payer}/holds/order-1/capture", json={"amount": 200})
        assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true", again.text
        assert again.content == captured.content
        assert balance(b, merchant)["balance"] == 200  # exactly once

        # A hold on an empty account, released: once released, the account can be closed.
        second = a.post(f"/v1/accounts/{payer}/holds", json={"id": "order-2", "amount": 50,
                                                               "destination_account_id": other})  # fmt: skip
        assert second.status_code == 201, second.text
        assert settled_close(b, other, 409).json()["code"] == "account_not_empty"
        released = a.post(f"/v1/accounts/{payer}/holds/order-2/release", json={})
        assert released.status_code == 200 and released.json()["hold"]["status"] == "released", released.text
        assert settled_close(b, other, 200).status_code == 200  # its mark on b went with the release
        # A hold that expires (a's sweep) drops its mark too.
        expiring = new_account(a, 1)
        short = {"id": "order-5", "amount": 40, "destination_account_id": expiring, "expires_in_s": 1}
        assert a.post(f"/v1/accounts/{payer}/holds", json=short).status_code == 201
        assert close(b, expiring).status_code in (409, 503)  # pending: refused (or still being counted)
        assert settled_close(b, expiring, 200, within_s=15).status_code == 200
        assert a.get(f"/v1/accounts/{payer}/holds/order-5").json()["status"] == "expired"
        # Now closed: a hold naming it is refused (recorded), and the refusal replays.
        late = {"id": "order-3", "amount": 10, "destination_account_id": other}
        refused_hold = a.post(f"/v1/accounts/{payer}/holds", json=late)
        assert refused_hold.status_code == 409 and refused_hold.json()["code"] == "account_inactive", refused_hold.text
        assert a.post(f"/v1/accounts/{payer}/holds", json=late).content == refused_hold.content
        missing = a.post(f"/v1/accounts/{payer}/holds", json={"id": "order-4", "amount": 10,
                                                                "destination_account_id": "US-1-0000000000000000"})  # fmt: skip
        assert missing.status_code == 404 and missing.json()["code"] == "account_not_found", missing.text
        assert (balance(a, payer)["balance"], balance(a, payer)["reserved"]) == (800, 0)
        # The internal routes that mark holds and answer which holds name an account: nodes only.
        mark = [payer, "forged", merchant, False]
        for route, body in (("shards/1/hold-mark", mark), ("holds-naming", {"shards": [1]})):
            assert b.post(f"/internal/v1/{route}", json=body).status_code == 404  # the admin key is not enough
            assert b.post(f"/internal/v1/{route}", json=body, headers={"x-balance-fleet": "guess"}).status_code == 404

    fleet.stop()
    books = asyncio.run(fleet_books(fleet.tmp_path))
    assert books[payer][1:] == (800, 0) and books[merchant][1:] == (200, 0) and books[other][1:] == (0, 0)


def test_the_marks_come_back_after_the_destinations_node_restarts_and_a_cut_capture_finishes_once(
    fleet: Fleet,
) -> None:
    with fleet.client("a") as a:
        payer, merchant = new_account(a, 0), new_account(a, 1)
        assert a.post(f"/v1/accounts/{payer}/credits", json={"id": "c1", "amount": 500}).status_code == 201
        hold = {"id": "order-9", "amount": 120, "destination_account_id": merchant}
        assert a.post(f"/v1/accounts/{payer}/holds", json=hold).status_code == 201

        fleet.kill("b")  # b forgets its marks (they are in memory)
        fleet.start("b")
        with fleet.client("b") as b:
            # b asks a which holds name its accounts: the close is refused, never allowed.
            refused = settled_close(b, merchant, 409)
            assert refused.status_code == 409 and refused.json()["code"] == "account_not_empty", refused.text

            # b dies before the capture's target leg: the money waits in a's transit account.
            fleet.kill("b")
            cut = a.post(f"/v1/accounts/{payer}/holds/order-9/capture", json={})
            assert cut.status_code == 503 and cut.headers.get("retry-after"), cut.text
            assert balance(a, payer)["balance"] == 380  # the source leg is done: payer → transit
        fleet.start("b")
        with fleet.client("b") as b:
            deadline = time.monotonic() + 15
            while (r := b.get(f"/v1/accounts/{merchant}")).status_code != 200 or r.json()["balance"] != 120:
                assert time.monotonic() < deadline, f"the capture was not finished: {r.text}"  # a's finisher
                time.sleep(0.2)
            done = a.post(f"/v1/accounts/{payer}/holds/order-9/capture", json={})
            assert done.status_code == 200 and done.headers.get("idempotent-replayed") == "true", done.text
            assert done.json()["hold"]["status"] == "captured" and done.json()["hold"]["captured_amount"] == 120
            assert balance(b, merchant)["balance"] == 120 and balance(a, payer)["balance"] == 380
            # Settled: the merchant's mark is gone (it holds money now, so it is not empty).
            assert settled_close(b, merchant, 409).json()["detail"].endswith("balance 120, reserved 0")

    fleet.stop()
    books = asyncio.run(fleet_books(fleet.tmp_path))
    assert books[payer][1:] == (380, 0) and books[merchant][1:] == (120, 0)


def test_a_batch_spanning_two_nodes_is_answered_in_order(fleet: Fleet) -> None:
    with fleet.client("a") as a, fleet.client("b") as b:
        p0, q0, p1, q1 = new_account(a, 0), new_account(a, 0), new_account(a, 1), new_account(a, 1)
        operations = [
            {"op": "credit", "account_id": p1, "id": "b1", "amount": 100},
            {"op": "credit", "account_id": p0, "id": "b2", "amount": 70},
            {"op": "debit", "account_id": p1, "id": "b3", "amount": 1000},  # refused: insufficient
            {
                "op": "transfer",
                "id": "b4",
                "from_account_id": p0,
                "to_account_id": q1,
                "amount": 20,
                "currency": "USD",
            },  # fmt: skip
            {"op": "credit", "account_id": q0, "id": "b5", "amount": -1},  # malformed: 422 alone
            {"op": "hold", "account_id": p1, "id": "b6", "amount": 30, "destination_account_id": q0},
            {"op": "credit", "account_id": "US-1-0000000000000000", "id": "b7", "amount": 1},
        ]
        answered = a.post("/v1/batch", json={"operations": operations})
        assert answered.status_code == 200, answered.text
        results = answered.json()["results"]
        assert [r["status"] for r in results] == [201, 201, 422, 201, 422, 201, 404], results
        assert results[0]["body"]["account"]["id"] == p1 and results[1]["body"]["account"]["id"] == p0
        assert results[2]["body"]["code"] == "insufficient_funds"
        assert results[5]["body"]["hold"]["destination_account_id"] == q0
        assert results[6]["body"]["code"] == "account_not_found"
        assert (balance(b, p1)["balance"], balance(b, p1)["reserved"]) == (100, 30)
        assert balance(a, p0)["balance"] == 50 and balance(b, q1)["balance"] == 20
        # The same batch through b: every operation replays its first answer.
        again = b.post("/v1/batch", json={"operations": operations}).json()["results"]
        assert [r["status"] for r in again] == [r["status"] for r in results]
        assert [r["body"] for r in again] == [r["body"] for r in results]
        assert [again[i]["replayed"] for i in (0, 1, 3, 5)] == [True] * 4  # (422 and 404: nothing recorded)
        assert not again[4]["replayed"] and not again[6]["replayed"]

        fleet.kill("b")  # its operations answer 503 each; a's are done
        down = a.post("/v1/batch", json={"operations": [
            {"op": "credit", "account_id": p1, "id": "d1", "amount": 5},
            {"op": "credit", "account_id": p0, "id": "d2", "amount": 5},
            {"op": "credit", "account_id": q1, "id": "d3", "amount": 5},
        ]})  # fmt: skip
        assert down.status_code == 200, down.text
        statuses = [(r["status"], r["body"].get("code")) for r in down.json()["results"]]
        assert statuses == [(503, "unavailable"), (201, None), (503, "unavailable")], statuses
        assert balance(a, p0)["balance"] == 55

    fleet.stop()
    books = asyncio.run(fleet_books(fleet.tmp_path))
    assert books[p0][1:] == (55, 0) and books[p1][1:] == (100, 30) and books[q1][1:] == (20, 0)
