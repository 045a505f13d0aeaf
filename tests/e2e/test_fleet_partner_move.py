"""A partner move across nodes, on two real node processes (shard 0 on node a, shard 1 on node
b, SQLite files and directory): a partner with 200 children and pending holds, under holds,
captures, releases, credits and transfers sent to both nodes, moved from shard 0 to shard 1 (asked of node b, run by node a, the
owner of shard 0); every node routes it to shard 1 through the directory; then moved back with
node b (now the source's owner) SIGKILLed mid-move and started again. Afterwards the move is
finished or rolled back, every acknowledged operation replays its first answer through either
node, each account lives on exactly one shard, each currency sums to zero over the fleet."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fleet_nodes import HEADERS, Fleet, fleet_books, new_account, two_nodes_fleet, unfinished_moves

CHILDREN = 200


async def load(
    url: str, kids: list[str], n: int, stop: asyncio.Event, acked: list[Any], unavailable: list[tuple[float, str]]
) -> None:
    """Holds, captures, releases, credits and transfers inside the subtree, sent to one node."""
    rng, i, held = random.Random(n), 0, []
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
        while not stop.is_set():
            i += 1
            kid, op, pick = rng.choice(kids), f"n{n}-{i}", rng.random()
            if pick < 0.35 or not held:
                path, body = f"/v1/accounts/{kid}/holds", {"id": op, "amount": 2, "expires_in_s": 3600}
            elif pick < 0.5:
                account_id, hold_id = held.pop(rng.randrange(len(held)))
                path, body = f"/v1/accounts/{account_id}/holds/{hold_id}/capture", {}
            elif pick < 0.65:
                account_id, hold_id = held.pop(rng.randrange(len(held)))
                path, body = f"/v1/accounts/{account_id}/holds/{hold_id}/release", {}
            elif pick < 0.8:
                path, body = f"/v1/accounts/{kid}/credits", {"id": op, "amount": 3}
            else:
                other = rng.choice([k for k in kids if k != kid])
                path, body = "/v1/transfers", {"id": op, "from_account_id": kid, "to_account_id": other,
                                               "amount": 1, "currency": "USD"}  # fmt: skip
            try:
                reply = await client.post(path, json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.05)
                continue
            if reply.status_code < 300:
                acked.append((path, body, reply.status_code, reply.content))
                if path.endswith("/holds"):
                    held.append((kid, op))
            else:  # a node away (the SIGKILL): never a wrong answer, and no 503 before it
                assert reply.status_code == 503, reply.text
                unavailable.append((time.monotonic(), reply.text))
            await asyncio.sleep(0.005)


def audit(data: Path) -> dict[str, int]:
    """Where each account lives (its shard), read from the shard files of the stopped nodes."""
    totals: dict[str, int] = {}
    live: dict[str, int] = {}
    for shard in (0, 1):
        conn = sqlite3.connect(data / f"shard-{shard}.db")
        for account_id, currency, balance, reserved, status in conn.execute(
            "SELECT id, currency, balance, reserved, status FROM accounts"
        ):
            totals[currency] = totals.get(currency, 0) + int(balance)
            pending = conn.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE account_id = ? AND status = 'pending'", (account_id,)
            ).fetchone()[0]
            assert reserved == pending, (shard, account_id)
            if status != "moved":
                assert account_id not in live, f"{account_id} lives on two shards"
                live[account_id] = shard
        conn.close()
    assert set(totals.values()) == {0}, totals
    return live


async def test_a_partner_moves_to_another_node_and_back_through_a_sigkill(fleet: Fleet, tmp_path: Path) -> None:
    with fleet.client("a") as a, fleet.client("b") as b:
        root = new_account(a, 0)
        kids = []
        for i in range(CHILDREN):
            kid = a.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"}).json()["id"]
            kids.append(kid)
            assert a.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 1_000}).status_code == 201
            assert b.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 10}).status_code == 201
        urls = [f"http://127.0.0.1:{fleet.envs[node]['BALANCE_PORT']}" for node in ("a", "b")]
        stop, acked, unavailable = asyncio.Event(), [], []  # type: ignore[var-annotated]
        clients = [asyncio.create_task(load(urls[n % 2], kids, n, stop, acked, unavailable)) for n in range(4)]
        await asyncio.sleep(0.5)
        moved = await asyncio.to_thread(b.post, f"/v1/partners/{root}/move", json={"to_shard": 1})
        assert moved.status_code == 200 and moved.json()["status"] == "done", moved.text
        assert moved.json()["holds"] >= CHILDREN
        deadline = time.monotonic() + 5
        while a.get(f"/v1/partners/{kids[3]}/placement").json().get("shard") != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        back = asyncio.create_task(asyncio.to_thread(a.post, f"/v1/partners/{root}/move", json={"to_shard": 0}))
        await asyncio.sleep(random.uniform(0.0, 0.1))
        killed_at = time.monotonic()
        fleet.kill("b")  # the owner of shard 1: the source of the move back
        # Through the first move's switch (either node, forwarded both ways) nothing answered 503.
        assert [text for at, text in unavailable if at < killed_at] == []
        await asyncio.to_thread(fleet.start, "b")
        try:
            await back
        except httpx.HTTPError:
            pass
        stop.set()
        await asyncio.gather(*clients)
        assert len(acked) > 20
        deadline = time.monotonic() + 20  # node b resumes its move in the background
        while unfinished_moves(tmp_path):
            assert time.monotonic() < deadline, unfinished_moves(tmp_path)
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # every node has read the last placement
        for client in (a, b):
            for path, body, status, content in acked:
                again = client.post(path, json=body)
                assert (again.status_code, again.content) == (status, content), (path, again.text)
        where = a.get(f"/v1/partners/{root}/placement").json()["shard"]
    fleet.stop()
    live = audit(tmp_path)
    assert {live[kid] for kid in [root, *kids]} == {where}


# (point, node, the shard the subtree lives on afterwards): killed before its move out, nothing
# of the move was durable (the freeze is in memory): the subtree serves on shard 0 again.
MOVE_CRASHES = [
    ("move_exported", "a", 0), ("move_moved_out", "a", 1), ("move_moved_in", "a", 1), ("after_move_in", "b", 1),
]  # fmt: skip


@pytest.mark.parametrize(("point", "node", "lives_on"), MOVE_CRASHES)
def test_a_move_across_nodes_killed_at_a_step_ends_done(
    fleet: Fleet, tmp_path: Path, point: str, node: str, lives_on: int
) -> None:
    """The node running the move (a) or the target's node (b) SIGKILLs itself at a step of
    the move (``BALANCE_FLEET_CRASH_AT``) and is started again: the move goes on to done (or,
    cut before its move out, the subtree serves where it was)."""
    with fleet.client("a") as a:
        root = new_account(a, 0)
        kids = [a.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"}).json()["id"]
                for i in range(10)]  # fmt: skip
        firsts = []
        for i, kid in enumerate(kids):
            firsts.append(a.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 100}))
            firsts.append(a.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 7}))
    fleet.procs[node].terminate()
    fleet.procs[node].wait(20)
    fleet.envs[node]["BALANCE_FLEET_CRASH_AT"] = point
    fleet.start(node)
    with fleet.client("b") as b:
        try:
            b.post(f"/v1/partners/{root}/move", json={"to_shard": 1})
        except httpx.HTTPError:
            pass
    assert fleet.procs[node].wait(15) == -9, f"node {node} did not reach {point}"
    del fleet.envs[node]["BALANCE_FLEET_CRASH_AT"]
    fleet.start(node)
    deadline = time.monotonic() + 20
    while unfinished_moves(tmp_path):
        assert time.monotonic() < deadline, unfinished_moves(tmp_path)
        time.sleep(0.1)
    time.sleep(2.5)  # every node has read the placement
    with fleet.client("a") as a, fleet.client("b") as b:
        for client in (a, b):
            assert client.get(f"/v1/partners/{kids[0]}/placement").json()["shard"] == lives_on
            for i, kid in enumerate(kids):
                credit = client.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 100})
                hold = client.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 7})
                assert (credit.content, hold.content) == (firsts[2 * i].content, firsts[2 * i + 1].content)
                assert credit.headers["idempotent-replayed"] == hold.headers["idempotent-replayed"] == "true"
        assert b.post(f"/v1/accounts/{kids[0]}/holds/h0/capture", json={}).status_code == 200
    fleet.stop()
    live = audit(tmp_path)
    assert {live[kid] for kid in [root, *kids]} == {lives_on}


# (point, the shard the subtree lives on afterwards, node a owns the target shard too)
NEVER_BACK = [
    ("move_exported", 0, False), ("move_moved_out", 1, False), ("move_moved_in", 1, False),
    ("move_moved_out", 1, True), ("move_moved_in", 1, True),
]  # fmt: skip


@pytest.mark.parametrize(("point", "lives_on", "both"), NEVER_BACK)
async def test_a_move_whose_node_never_comes_back_is_finished_by_the_shards_next_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, lives_on: int, both: bool
) -> None:
    """Node a (owner of the source shard 0, node b its standby) runs a move to shard 1 while two
    clients send holds, captures, releases, credits and transfers of the subtree to node b, and
    is SIGKILLed at a step; it is NOT started again. Node b takes shard 0 over and finds the move
    in shard 0's own record: after the move out it finishes it (the subtree lives on shard 1,
    through b); before it, nothing was durable and the subtree serves on shard 0 (through b).
    Either way every acknowledged operation and every first answer replays, each account lives
    on one shard, the books balance. With ``both``, node a owned the target shard too (it
    started first, as shard 1's standby): b takes both over, and the arrival runs there."""
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    standbys = {0: "b", 1: "a"} if both else {0: "b"}
    fleet = await asyncio.to_thread(two_nodes_fleet, tmp_path, standbys=standbys, crash_at={"a": point})
    try:
        with fleet.client("a") as a:
            root = new_account(a, 0)
            kids = [a.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"}).json()["id"]
                    for i in range(20)]  # fmt: skip
            firsts = []
            for i, kid in enumerate(kids):
                firsts.append(a.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 100}))
                firsts.append(a.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 7}))
                assert (firsts[-2].status_code, firsts[-1].status_code) == (201, 201)
            moved = a.post("/v1/transfers", json={"id": "t0", "from_account_id": kids[0], "to_account_id": kids[1],
                                                  "amount": 5, "currency": "USD"})  # fmt: skip
            assert moved.status_code == 201
        url = f"http://127.0.0.1:{fleet.envs['b']['BALANCE_PORT']}"
        stop, acked, unavailable = asyncio.Event(), [], []  # type: ignore[var-annotated]
        clients = [asyncio.create_task(load(url, kids[3:], n, stop, acked, unavailable)) for n in range(2)]
        await asyncio.sleep(0.5)

        def move_and_lose_a() -> None:
            with fleet.client("b") as b:
                try:
                    b.post(f"/v1/partners/{root}/move", json={"to_shard": 1})  # forwarded to a, which runs it
                except httpx.HTTPError:
                    pass
            assert fleet.procs["a"].wait(15) == -9, f"node a did not reach {point}"
            deadline = time.monotonic() + 30  # the lease (2 s), the takeover, the move finished by b
            with fleet.client("b") as b:
                while True:
                    ready = b.get("/readyz")
                    where = b.get(f"/v1/partners/{kids[0]}/placement").json().get("shard")
                    credit = b.post(f"/v1/accounts/{kids[0]}/credits", json={"id": "s0", "amount": 100})
                    if not unfinished_moves(tmp_path) and where == lives_on and credit.status_code == 201:
                        break
                    assert time.monotonic() < deadline, (unfinished_moves(tmp_path), where, ready.text, credit.text)
                    time.sleep(0.2)
                assert set(ready.json()["shards"]) == {"0", "1"}, ready.text  # b serves both shards now

        await asyncio.to_thread(move_and_lose_a)
        await asyncio.sleep(1.0)  # the load runs on against the subtree where it lives now
        stop.set()
        await asyncio.gather(*clients)
        assert len(acked) > 20

        def replays() -> None:
            with fleet.client("b") as b:
                for i, kid in enumerate(kids):
                    credit = b.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 100})
                    hold = b.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 7})
                    assert (credit.content, hold.content) == (firsts[2 * i].content, firsts[2 * i + 1].content)
                    assert credit.headers["idempotent-replayed"] == hold.headers["idempotent-replayed"] == "true"
                for path, body, status, content in acked:  # every acknowledged operation, exactly once
                    again = b.post(path, json=body)
                    assert (again.status_code, again.content) == (status, content), (path, again.text)
                again = b.post("/v1/transfers", json={"id": "t0", "from_account_id": kids[0],
                                                      "to_account_id": kids[1], "amount": 5, "currency": "USD"})  # fmt: skip
                assert (again.status_code, again.content) == (201, moved.content)
                assert b.post(f"/v1/accounts/{kids[0]}/holds/h0/capture", json={}).status_code == 200
                assert b.post(f"/v1/accounts/{kids[2]}/credits", json={"id": "after", "amount": 1}).status_code == 201
                account = b.get(f"/v1/accounts/{kids[2]}").json()
                assert (account["balance"], account["reserved"]) == (101, 7), account

        await asyncio.to_thread(replays)
    finally:
        fleet.stop()
    conn = sqlite3.connect(tmp_path / "shard-0.db")
    steps = conn.execute("SELECT step, LENGTH(data) FROM moves WHERE part = 0").fetchall()
    emptied = conn.execute("SELECT COUNT(*) FROM moves WHERE part > 0 AND LENGTH(data) > 0").fetchone()[0]
    conn.close()
    assert steps == ([] if lives_on == 0 else [("done", 0)]) and emptied == 0, steps
    live = audit(tmp_path)
    assert {live[kid] for kid in [root, *kids]} == {lives_on}
    books = await fleet_books(tmp_path)  # each shard recovered afresh: reserved == pending holds
    assert books[kids[2]] == ("USD", 101, 7)
