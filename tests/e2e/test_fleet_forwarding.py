"""Forwarding on real processes: two nodes, each owning one of two shards (SQLite files and a
SQLite directory in a shared data directory). A request for an account on the other node's
shard is authenticated here, forwarded once to the owner, and its answer passed through
unchanged (status, body, the replay mark); an owner that is down gives 503 with Retry-After;
a request that claims to be forwarded with a wrong fleet secret is not trusted."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from fleet_nodes import SECRET, Fleet, new_account


@pytest.fixture
def two_nodes(fleet: Fleet) -> Iterator[tuple[httpx.Client, httpx.Client, subprocess.Popen[bytes]]]:
    with fleet.client("a") as a, fleet.client("b") as b:
        yield a, b, fleet.procs["a"]


def test_a_request_for_another_nodes_shard_is_forwarded_and_answered_as_the_owner_answers(
    two_nodes: tuple[httpx.Client, httpx.Client, subprocess.Popen[bytes]],
) -> None:
    a, b, a_proc = two_nodes
    made = []  # through a: spread over both shards (those on shard 1 forwarded to b)
    for _ in range(20):
        created = a.post("/v1/accounts", json={"kind": "user", "region": "US", "currency": "USD", "name": "x"})
        for _ in range(50):  # a learns b's URL at its next directory read (every lease / 3): 503 meanwhile
            if created.status_code != 503:
                break
            time.sleep(0.1)
            created = a.post("/v1/accounts", json={"kind": "user", "region": "US", "currency": "USD", "name": "x"})
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    assert {m.split("-")[1] for m in made} == {"0", "1"}
    account = next(m for m in made if m.startswith("US-0-"))  # a owns shard 0

    credit = {"id": "fwd-1", "amount": 70}
    via_b = b.post(f"/v1/accounts/{account}/credits", json=credit)
    assert via_b.status_code == 201, via_b.text
    replay_via_a = a.post(f"/v1/accounts/{account}/credits", json=credit)
    assert replay_via_a.status_code == 201 and replay_via_a.headers["idempotent-replayed"] == "true"
    replay_via_b = b.post(f"/v1/accounts/{account}/credits", json=credit)
    assert replay_via_b.headers.get("idempotent-replayed") == "true"
    assert replay_via_b.content == replay_via_a.content == via_b.content  # passed through unchanged
    assert b.get(f"/v1/accounts/{account}").content == a.get(f"/v1/accounts/{account}").content
    missing = b.get("/v1/accounts/US-0-0000000000000000")
    assert missing.status_code == 404 and missing.json()["code"] == "account_not_found"  # the owner's answer
    bad = b.post(f"/v1/accounts/{account}/credits", json={"id": "fwd-2", "amount": -1})
    assert (
        bad.status_code == 422
        and bad.content == a.post(f"/v1/accounts/{account}/credits", json={"id": "fwd-2", "amount": -1}).content
    )

    # The key is checked on the receiving node first: a wrong key never reaches the owner.
    assert b.get(f"/v1/accounts/{account}", headers={"Authorization": "Bearer nope"}).status_code == 401
    # A request claiming to come from a node with a wrong secret is forwarded like any other
    # (the claim is not trusted); with the right one, b does not forward it again.
    assert b.get(f"/v1/accounts/{account}", headers={"x-balance-fleet": "guess"}).status_code == 200
    once = b.get(f"/v1/accounts/{account}", headers={"x-balance-fleet": SECRET})
    assert once.status_code == 503 and once.headers.get("retry-after")

    # A partner key, made on its shard's node, works on the other node (authenticated there
    # from the directory, forwarded); revoked, it is refused there within two seconds.
    made_key = a.post(f"/v1/accounts/{account}/keys", json={})
    assert made_key.status_code == 201, made_key.text
    partner = {"Authorization": f"Bearer {made_key.json()['key']}"}
    deadline = time.monotonic() + 5
    while (seen := b.get(f"/v1/accounts/{account}", headers=partner)).status_code == 401:
        assert time.monotonic() < deadline, "the key never reached node b"
        time.sleep(0.1)
    assert seen.status_code == 200, seen.text
    key_id = made_key.json().get("key_id") or made_key.json()["id"]
    assert a.delete(f"/v1/accounts/{account}/keys/{key_id}").status_code == 200
    revoked_at = time.monotonic()
    while b.get(f"/v1/accounts/{account}", headers=partner).status_code != 401:
        assert time.monotonic() - revoked_at < 2.0, "a revocation took more than two seconds to reach node b"
        time.sleep(0.05)

    # Money across nodes: the source leg on a, the target leg on b (its internal route), the
    # answer back; the same id again, through either node, gives the first answer.
    other = next(m for m in made if m.startswith("US-1-"))
    transfer = {"id": "t-1", "from_account_id": account, "to_account_id": other, "amount": 10, "currency": "USD"}
    across = a.post("/v1/transfers", json=transfer)
    assert across.status_code == 201, across.text
    assert [acc["balance"] for acc in across.json()["accounts"]] == [60, 10]
    again = b.post("/v1/transfers", json=transfer)  # forwarded to a: replayed there
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.content == across.content
    assert a.get(f"/v1/accounts/{account}").json()["balance"] == 60
    assert b.get(f"/v1/accounts/{other}").json()["balance"] == 10
    # The internal route: not reachable without the fleet secret, whatever the key.
    for leg in ("/internal/v1/shards/1/transfer-in", "/internal/v1/shards/1/hold-mark",
                "/internal/v1/shards/1/move-in", "/internal/v1/shards/1/payment-result",
                "/internal/v1/holds-naming", "/internal/v1/shards/1/history",
                "/internal/v1/shards/1/hold"):  # fmt: skip
        assert b.post(leg, content=b"[]").status_code == 404, leg  # the admin key is not enough
        assert b.post(leg, content=b"[]", headers={"x-balance-fleet": "guess"}).status_code in (401, 404), leg
        assert b.post(leg, content=b"[]", headers=partner).status_code in (401, 404), leg  # (revoked above)
    # A transfer within a's shard, sent to b: forwarded to a, done.
    neighbour = next(m for m in made if m.startswith("US-0-") and m != account)
    within = b.post("/v1/transfers", json={"id": "t-2", "from_account_id": account, "to_account_id": neighbour,
                                           "amount": 10, "currency": "USD"})  # fmt: skip
    assert within.status_code == 201, within.text
    assert a.get(f"/v1/accounts/{neighbour}").json()["balance"] == 10
    assert a.get(f"/v1/accounts/{account}").json()["balance"] == 50

    a_proc.send_signal(signal.SIGKILL)
    a_proc.wait(10)
    down = b.post(f"/v1/accounts/{account}/credits", json={"id": "fwd-3", "amount": 1})
    assert down.status_code == 503 and down.headers.get("retry-after"), down.text
    assert down.json()["code"] == "unavailable"


def test_a_transfer_whose_target_node_is_down_is_finished_once_it_is_back(fleet: Fleet) -> None:
    with fleet.client("a") as a:
        source, target = new_account(a, 0), new_account(a, 1)
        assert a.post(f"/v1/accounts/{source}/credits", json={"id": "c", "amount": 100}).status_code == 201
        fleet.procs["b"].send_signal(signal.SIGKILL)
        fleet.procs["b"].wait(10)
        transfer = {"id": "t-down", "from_account_id": source, "to_account_id": target, "amount": 30, "currency": "USD"}
        in_flight = a.post("/v1/transfers", json=transfer)
        assert in_flight.status_code == 503 and in_flight.headers.get("retry-after"), in_flight.text
        assert a.get(f"/v1/accounts/{source}").json()["balance"] == 70  # in transit, not lost
        fleet.start("b")
        deadline = time.monotonic() + 15
        while (r := a.get(f"/v1/accounts/{target}")).status_code != 200 or r.json()["balance"] != 30:
            assert time.monotonic() < deadline, f"the transfer was not finished: {r.text}"  # by a's finisher
            time.sleep(0.2)
        done = a.post("/v1/transfers", json=transfer)
        assert done.status_code == 201 and done.headers.get("idempotent-replayed") == "true", done.text
        assert [acc["balance"] for acc in done.json()["accounts"]] == [70, 30]
        assert a.get(f"/v1/accounts/{source}").json()["balance"] == 70
