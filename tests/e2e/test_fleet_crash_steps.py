"""A movement across nodes killed at each of its steps, on real processes (``fleet_nodes``:
node a owns shard 0, the source; node b shard 1, the target). The node is started with
``BALANCE_FLEET_CRASH_AT`` (``balance.node.crash_points``) and SIGKILLs itself at that step:

- ``before_target_leg``: a, the source leg committed (money in a's transit account);
- ``after_target_leg``: b, the target leg committed, its answer never sent;
- ``before_complete``: a, b's answer received, the source not yet completed.

It is started again without the hook; the movement is then finished by the source node (at
start, or by its finisher every 2 s) exactly once: the target got the money once, a replay of
the same id gives the final answer, and the shard files recovered afresh balance (each shard's
invariants, each currency summing to zero over the fleet). For a transfer and for the capture
of a hold whose destination is on b."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fleet_nodes import Fleet, fleet_books, new_account

CRASHES = [("before_target_leg", "a"), ("after_target_leg", "b"), ("before_complete", "a")]


def restart_with_crash_point(fleet: Fleet, node: str, point: str) -> None:
    fleet.procs[node].terminate()
    fleet.procs[node].wait(20)
    fleet.envs[node]["BALANCE_FLEET_CRASH_AT"] = point
    fleet.start(node)


def crashed_and_started_again(fleet: Fleet, node: str) -> None:
    try:
        code = fleet.procs[node].wait(15)
    except Exception:  # noqa: BLE001
        pytest.fail(f"node {node} did not reach its crash point")
    assert code == -9, f"node {node} ended with {code}, not by its crash point"
    del fleet.envs[node]["BALANCE_FLEET_CRASH_AT"]
    fleet.start(node)


def send(client: httpx.Client, path: str, body: dict[str, object]) -> int | None:
    """The status, or None when the node died before answering."""
    try:
        return client.post(path, json=body).status_code
    except httpx.HTTPError:
        return None


def wait_balance(client: httpx.Client, account: str, want: int) -> None:
    deadline = time.monotonic() + 20
    while (r := client.get(f"/v1/accounts/{account}")).status_code != 200 or r.json()["balance"] != want:
        assert time.monotonic() < deadline, f"{account}: never reached {want}: {r.text}"
        time.sleep(0.2)


@pytest.mark.parametrize(("point", "node"), CRASHES)
def test_a_transfer_across_nodes_killed_at_a_step_is_finished_exactly_once(fleet: Fleet, point: str, node: str) -> None:
    with fleet.client("a") as a:
        source, target = new_account(a, 0), new_account(a, 1)
        assert a.post(f"/v1/accounts/{source}/credits", json={"id": "c", "amount": 100}).status_code == 201
    restart_with_crash_point(fleet, node, point)
    transfer = {"id": "t-crash", "from_account_id": source, "to_account_id": target, "amount": 30, "currency": "USD"}
    with fleet.client("a") as a:
        status = send(a, "/v1/transfers", transfer)
    assert status in (None, 503), status  # never acknowledged: the node died on the way
    crashed_and_started_again(fleet, node)
    with fleet.client("a") as a, fleet.client("b") as b:
        wait_balance(b, target, 30)  # finished by a (at its start, or by its finisher)
        done = a.post("/v1/transfers", json=transfer)
        assert done.status_code == 201 and done.headers.get("idempotent-replayed") == "true", done.text
        assert [acc["balance"] for acc in done.json()["accounts"]] == [70, 30]
        assert b.get(f"/v1/accounts/{target}").json()["balance"] == 30  # exactly once
    fleet.stop()
    books = asyncio.run(fleet_books(fleet.tmp_path))
    assert books[source][1:] == (70, 0) and books[target][1:] == (30, 0)


@pytest.mark.parametrize(("point", "node"), CRASHES)
def test_a_capture_across_nodes_killed_at_a_step_is_finished_exactly_once(fleet: Fleet, point: str, node: str) -> None:
    with fleet.client("a") as a:
        payer, merchant = new_account(a, 0), new_account(a, 1)
        assert a.post(f"/v1/accounts/{payer}/credits", json={"id": "c", "amount": 100}).status_code == 201
        hold = {"id": "h-crash", "amount": 50, "destination_account_id": merchant}
        assert a.post(f"/v1/accounts/{payer}/holds", json=hold).status_code == 201
    restart_with_crash_point(fleet, node, point)
    with fleet.client("a") as a:
        status = send(a, f"/v1/accounts/{payer}/holds/h-crash/capture", {"amount": 30})
    assert status in (None, 503), status
    crashed_and_started_again(fleet, node)
    with fleet.client("a") as a, fleet.client("b") as b:
        wait_balance(b, merchant, 30)
        done = a.post(f"/v1/accounts/{payer}/holds/h-crash/capture", json={"amount": 30})
        assert done.status_code == 200 and done.headers.get("idempotent-replayed") == "true", done.text
        assert done.json()["hold"]["status"] == "captured" and done.json()["hold"]["captured_amount"] == 30
        payer_now = a.get(f"/v1/accounts/{payer}").json()
        assert (payer_now["balance"], payer_now["reserved"]) == (70, 0)
        assert b.get(f"/v1/accounts/{merchant}").json()["balance"] == 30  # exactly once
    fleet.stop()
    books = asyncio.run(fleet_books(fleet.tmp_path))
    assert books[payer][1:] == (70, 0) and books[merchant][1:] == (30, 0)
