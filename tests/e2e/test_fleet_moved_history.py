"""A moved partner's history on a fleet (two real node processes: shard 0 on node a, shard 1
on node b, SQLite files and directory): the partner moved to node b's shard and back, with
traffic through both nodes before and after each move. Then, through either node, every row
of each account's history is listed exactly once over small pages (the rows on the shard of
the node that does not serve the account are asked of it), every transaction id is unique
over the fleet and ``GET …/transactions/{id}`` finds each row, another partner's key finds
none of them, and a hold that ended on the other node's shard reads as it ended there."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from fleet_nodes import SECRET, Fleet, fleet_books, new_account

from balance.storage import schema

KIDS = 4


def traffic(clients: list[httpx.Client], root: str, kids: list[str], tag: str) -> None:
    """Credits, debits, transfers and captured holds on every account, through both nodes."""
    for i, kid in enumerate([root, *kids]):
        client = clients[i % 2]
        assert (
            client.post(f"/v1/accounts/{kid}/credits", json={"id": f"{tag}-cr-{i}", "amount": 100}).status_code == 201
        )
        assert client.post(f"/v1/accounts/{kid}/debits", json={"id": f"{tag}-db-{i}", "amount": 7}).status_code == 201
        transfer = {"id": f"{tag}-tr-{i}", "from_account_id": kid, "to_account_id": kids[(i + 1) % len(kids)],
                    "amount": 3, "currency": "USD"}  # fmt: skip
        assert clients[(i + 1) % 2].post("/v1/transfers", json=transfer).status_code == 201
        hold = client.post(f"/v1/accounts/{kid}/holds", json={"id": f"{tag}-h-{i}", "amount": 5})
        assert hold.status_code == 201, hold.text
        assert clients[(i + 1) % 2].post(f"/v1/accounts/{kid}/holds/{tag}-h-{i}/capture", json={}).status_code == 200


def wait_placed(clients: list[httpx.Client], account_id: str, shard: int) -> None:
    deadline = time.monotonic() + 5
    for client in clients:
        while client.get(f"/v1/partners/{account_id}/placement").json().get("shard") != shard:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def stored(data: Path, account_id: str) -> set[tuple[int, int]]:
    """(shard, seq) of every history row of the account, read from the shard files."""
    found = set()
    for shard in (0, 1):
        conn = sqlite3.connect(data / f"shard-{shard}.db")
        sql, args = schema.history_query("?", account_id, 10_000, None, None, None, history_table=True)
        found |= {(shard, int(row[0])) for row in conn.execute(sql, args)}
        conn.close()
    return found


def pages(client: httpx.Client, account_id: str, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = client.get(f"/v1/accounts/{account_id}/transactions", params=params)
        assert page.status_code == 200, page.text
        rows += page.json()["data"]
        if page.json()["next_cursor"] is None:
            return rows
        params["cursor"] = page.json()["next_cursor"]


def test_a_partner_moved_to_another_node_and_back_reads_its_whole_history(fleet: Fleet, tmp_path: Path) -> None:
    with fleet.client("a") as a, fleet.client("b") as b:
        clients = [a, b]
        root = new_account(a, 0)
        kids = [a.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"}).json()["id"]
                for i in range(KIDS)]  # fmt: skip
        neighbour = new_account(a, 0)  # another partner: its key sees none of it
        neighbour_key = a.post(f"/v1/accounts/{neighbour}/keys", json={}).json()["key"]
        traffic(clients, root, kids, "before")
        assert a.post(f"/v1/accounts/{kids[0]}/holds", json={"id": "early", "amount": 11}).status_code == 201
        assert a.post(f"/v1/accounts/{kids[0]}/holds/early/capture", json={}).status_code == 200
        assert a.post(f"/v1/accounts/{kids[0]}/holds", json={"id": "round", "amount": 13}).status_code == 201

        moved = b.post(f"/v1/partners/{root}/move", json={"to_shard": 1})
        assert moved.status_code == 200 and moved.json()["status"] == "done", moved.text
        wait_placed(clients, root, 1)
        traffic(clients, root, kids, "there")
        for client in clients:  # settled on shard 0 before the move: read there, through node a
            early = client.get(f"/v1/accounts/{kids[0]}/holds/early")
            assert (early.status_code, early.json().get("status")) == (200, "captured"), early.text
        assert a.post(f"/v1/accounts/{kids[0]}/holds/round/capture", json={"amount": 5}).status_code == 200

        back = a.post(f"/v1/partners/{root}/move", json={"to_shard": 0})
        assert back.status_code == 200 and back.json()["status"] == "done", back.text
        wait_placed(clients, root, 0)
        traffic(clients, root, kids, "back")
        time.sleep(2.5)  # every node has read the last placement change

        neighbour_auth = {"Authorization": f"Bearer {neighbour_key}"}
        every_id: set[str] = set()
        for client in clients:
            round_ = client.get(f"/v1/accounts/{kids[0]}/holds/round")  # ended on shard 1 (node b)
            assert (round_.status_code, round_.json()["status"], round_.json()["captured_amount"]) == (
                200, "captured", 5
            ), round_.text  # fmt: skip
        for account_id in [root, *kids]:
            expected = stored(tmp_path, account_id)
            assert {shard for shard, _ in expected} == {0, 1}
            listed: list[dict[str, Any]] = []
            for client in clients:
                for limit in (3, 1000):
                    listed = pages(client, account_id, limit)
                    ids = [row["id"] for row in listed]
                    assert len(ids) == len(set(ids)) == len(expected), (account_id, limit)
                    assert {(int(i.split("-")[1]), int(i.split("-t")[1])) for i in ids} == expected
            assert not every_id & {row["id"] for row in listed}, "a transaction id repeats another account's"
            every_id |= {row["id"] for row in listed}
            for row in listed:
                for client in clients:
                    found = client.get(f"/v1/accounts/{account_id}/transactions/{row['id']}")
                    assert (found.status_code, found.json()) == (200, row), row["id"]
                    mine = client.get(f"/v1/accounts/{neighbour}/transactions/{row['id']}", headers=neighbour_auth)
                    assert mine.status_code == 404, mine.text
                    theirs = client.get(f"/v1/accounts/{account_id}/transactions/{row['id']}", headers=neighbour_auth)
                    assert theirs.status_code == 403, theirs.text
            for wrong in ("US-2-t1", "US-1-t99999999"):
                assert a.get(f"/v1/accounts/{account_id}/transactions/{wrong}").status_code == 404
        # The routes other nodes read through: closed without the fleet secret, open with it.
        for route in ("/internal/v1/shards/1/history", "/internal/v1/shards/1/hold"):
            assert b.post(route, content=b"[]").status_code == 404, route
            assert b.post(route, content=b"[]", headers={"x-balance-fleet": "guess"}).status_code in (401, 404)
            assert b.post(route, content=b"[]", headers=neighbour_auth).status_code == 404
        asked = b.post("/internal/v1/shards/1/history", json=[kids[0], 1000, None, None, None],
                       headers={"x-balance-fleet": SECRET})  # fmt: skip
        assert asked.status_code == 200 and asked.json()["rows"], asked.text
    fleet.stop()
    asyncio.run(fleet_books(tmp_path))
