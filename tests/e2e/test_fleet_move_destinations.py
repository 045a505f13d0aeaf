"""A partner involved in holds naming a destination, moved to another node's shard (two real
node processes: shard 0 on node a, shard 1 on node b, SQLite files and directory). Its payer
holds money for a shop on each node and for the partner's own merchant; buyers on both nodes
hold money for its merchants. After the move: the merchant named by pending holds cannot be
closed (through either node), every hold is captured once and pays its payee where it lives,
replays answer first, and once the holds naming it are released the idle merchant closes;
the shard files balance (transit included) and reserved equals the pending holds."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fleet_nodes import Fleet, fleet_books, new_account
from test_fleet_holds import settled_close

SEED = 1_000


def child(client: httpx.Client, parent: str, name: str) -> str:
    reply = client.post("/v1/accounts", json={"kind": "user", "parent_id": parent, "name": name})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def hold(client: httpx.Client, account: str, hold_id: str, amount: int, destination: str) -> None:
    body = {"id": hold_id, "amount": amount, "destination_account_id": destination, "expires_in_s": 3600}
    reply = client.post(f"/v1/accounts/{account}/holds", json=body)
    assert reply.status_code == 201, reply.text


def balance(client: httpx.Client, account: str) -> tuple[int, int]:
    body = client.get(f"/v1/accounts/{account}").json()
    return int(body["balance"]), int(body["reserved"])


class Scene:
    """The moving partner (shard 0, node a) with a payer and merchants; a gateway on each node
    with a buyer and a shop; the holds naming a destination (none on the idle merchants but
    one each: ``idle`` named by node a's, ``idle1`` by node b's)."""

    def __init__(self, a: httpx.Client, b: httpx.Client) -> None:
        self.partner, gateway0, gateway1 = new_account(a, 0), new_account(a, 0), new_account(a, 1)
        self.payer, self.merchant, self.idle, self.idle1 = (
            child(a, self.partner, n) for n in ("payer", "merchant", "idle", "idle1")
        )
        self.buyer0, self.shop0 = child(a, gateway0, "buyer0"), child(a, gateway0, "shop0")
        self.buyer1, self.shop1 = child(b, gateway1, "buyer1"), child(b, gateway1, "shop1")
        for account in (self.payer, self.buyer0, self.buyer1):
            assert a.post(f"/v1/accounts/{account}/credits", json={"id": "seed", "amount": SEED}).status_code == 201
        self.holds = [
            (self.payer, "p-s0", 100, self.shop0), (self.payer, "p-s1", 50, self.shop1),
            (self.payer, "p-m", 30, self.merchant), (self.buyer0, "b0-m", 40, self.merchant),
            (self.buyer1, "b1-m", 60, self.merchant),
        ]  # fmt: skip
        for account, hold_id, amount, destination in self.holds:
            hold(a if account != self.buyer1 else b, account, hold_id, amount, destination)
        hold(a, self.buyer0, "b0-i", 5, self.idle)
        hold(b, self.buyer1, "b1-i", 5, self.idle1)
        spare = child(b, gateway1, "spare")  # node b knows the fleet's holds naming shard 1 (closes served)
        assert settled_close(b, spare, 200).status_code == 200

    def after_the_move(self, a: httpx.Client, b: httpx.Client, extra: int = 0) -> None:
        """Closes of the merchants named by pending holds refused; every hold captured once
        through either node, replayed through both; the idle merchants close once released."""
        deadline = time.monotonic() + 5
        while a.get(f"/v1/partners/{self.merchant}/placement").json().get("shard") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Named only by a hold of node a's shard (idle) or of its own new shard (idle1): at once
        # after the move its close waits for it (503 while node b asks the fleet, never a 200).
        for account in (self.idle, self.idle1):
            for client in (b, a):
                refused = settled_close(client, account, 409)
                assert refused.status_code == 409 and refused.json()["code"] == "account_not_empty", refused.text
        captured = []
        for n, (account, hold_id, _, _) in enumerate(self.holds):
            client = (a, b)[n % 2]
            reply = client.post(f"/v1/accounts/{account}/holds/{hold_id}/capture", json={})
            assert reply.status_code == 200, reply.text
            captured.append((account, hold_id, reply.content))
        for client in (a, b):
            for account, hold_id, first in captured:
                again = client.post(f"/v1/accounts/{account}/holds/{hold_id}/capture", json={})
                assert (again.status_code, again.content) == (200, first)
                assert again.headers["idempotent-replayed"] == "true"
            assert balance(client, self.shop0) == (100, 0) and balance(client, self.shop1) == (50, 0)
            assert balance(client, self.merchant) == (130, 0)
            assert balance(client, self.payer) == (SEED - 180, 0)
            assert balance(client, self.buyer0) == (SEED - 40, 5 + extra)
            assert balance(client, self.buyer1) == (SEED - 60, 5)
        assert a.post(f"/v1/accounts/{self.buyer0}/holds/b0-i/release", json={}).status_code == 200
        assert b.post(f"/v1/accounts/{self.buyer1}/holds/b1-i/release", json={}).status_code == 200
        for account, client in ((self.idle, a), (self.idle1, b)):
            closed = settled_close(client, account, 200)
            assert closed.status_code == 200, closed.text


async def test_a_partner_named_by_holds_and_holding_them_moves_to_another_node(fleet: Fleet) -> None:
    with fleet.client("a") as a, fleet.client("b") as b:
        scene = Scene(a, b)
        moved = b.post(f"/v1/partners/{scene.partner}/move", json={"to_shard": 1})
        assert moved.status_code == 200 and moved.json()["status"] == "done", moved.text
        assert moved.json()["holds"] == 3
        # At once, a new hold of node a's shard naming the moved merchant (marked on node b,
        # which may not have read the switch yet): placed, no 503.
        hold(a, scene.buyer0, "b0-after", 3, scene.merchant)
        scene.after_the_move(a, b, extra=3)
        assert a.post(f"/v1/accounts/{scene.buyer0}/holds/b0-after/release", json={}).status_code == 200
    fleet.stop()
    books = await fleet_books(fleet.tmp_path)
    assert books[scene.merchant][1:] == (130, 0) and books[scene.shop1][1:] == (50, 0)


@pytest.mark.parametrize(("point", "node"), [("move_moved_out", "a"), ("after_move_in", "b")])
async def test_the_same_move_with_a_node_killed_mid_move(fleet: Fleet, tmp_path: Path, point: str, node: str) -> None:
    """The node running the move (after its move out) or the target's node (after the arrival
    committed) SIGKILLs itself and is started again: the move ends done, the marks are rebuilt
    where the accounts live, and everything after the move is as without the crash."""
    with fleet.client("a") as a, fleet.client("b") as b:
        scene = Scene(a, b)
    fleet.procs[node].terminate()
    fleet.procs[node].wait(20)
    fleet.envs[node]["BALANCE_FLEET_CRASH_AT"] = point
    fleet.start(node)
    with fleet.client("b") as b:
        try:
            b.post(f"/v1/partners/{scene.partner}/move", json={"to_shard": 1})
        except httpx.HTTPError:
            pass
    assert fleet.procs[node].wait(15) == -9, f"node {node} did not reach {point}"
    del fleet.envs[node]["BALANCE_FLEET_CRASH_AT"]
    fleet.start(node)
    deadline = time.monotonic() + 20
    while list(tmp_path.glob("moves-*/*.json")):
        assert time.monotonic() < deadline, list(tmp_path.glob("moves-*/*"))
        time.sleep(0.1)
    with fleet.client("a") as a, fleet.client("b") as b:
        scene.after_the_move(a, b)
    fleet.stop()
    books = await fleet_books(tmp_path)
    assert books[scene.merchant][1:] == (130, 0) and books[scene.shop1][1:] == (50, 0)
