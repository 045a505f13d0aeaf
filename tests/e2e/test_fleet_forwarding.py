"""Forwarding on real processes: two nodes, each owning one of two shards (SQLite files and a
SQLite directory in a shared data directory). A request for an account on the other node's
shard is authenticated here, forwarded once to the owner, and its answer passed through
unchanged (status, body, the replay mark); an owner that is down gives 503 with Retry-After;
a request that claims to be forwarded with a wrong fleet secret is not trusted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_process import free_port, start_ready

from balance import cli

ADMIN_KEY = "adm_fwd_" + uuid.uuid4().hex
SECRET = "fleet_" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def node_env(data_dir: Path, node_id: str) -> dict[str, str]:
    port = free_port()
    env = {**os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port), "BALANCE_DATA_DIR": str(data_dir),
           "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_NODE_ID": node_id, "BALANCE_NODE_URL": f"http://127.0.0.1:{port}",
           "BALANCE_FLEET_SECRET": SECRET, "BALANCE_LEASE_S": "2"}  # fmt: skip
    env.pop("BALANCE_DIRECTORY_URL", None)
    return env


@pytest.fixture
def two_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[httpx.Client, httpx.Client, subprocess.Popen[bytes]]]:
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    assert cli.main(["shards", "add", "0", "--database", str(tmp_path / "shard-0.db"), "--node", "a"]) == 0
    assert cli.main(["shards", "add", "1", "--database", str(tmp_path / "shard-1.db"), "--node", "b"]) == 0
    a_env, b_env = node_env(tmp_path, "a"), node_env(tmp_path, "b")
    a_proc, a_url = start_ready(a_env, tmp_path / "a.log")
    b_proc, b_url = start_ready(b_env, tmp_path / "b.log")
    with (
        httpx.Client(base_url=a_url, headers=HEADERS, timeout=30) as a,
        httpx.Client(base_url=b_url, headers=HEADERS, timeout=30) as b,
    ):
        yield a, b, a_proc
    for proc in (a_proc, b_proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


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

    # Money across nodes is not built yet: refused before anything moves (nothing in transit).
    other = next(m for m in made if m.startswith("US-1-"))
    across = a.post("/v1/transfers", json={"id": "t-1", "from_account_id": account, "to_account_id": other,
                                            "amount": 10, "currency": "USD"})  # fmt: skip
    assert across.status_code == 503 and "across nodes" in across.json()["detail"], across.text
    via_b = b.post("/v1/transfers", json={"id": "t-1", "from_account_id": account, "to_account_id": other,
                                          "amount": 10, "currency": "USD"})  # fmt: skip
    assert via_b.status_code == 503 and via_b.content == across.content  # forwarded to a, its answer
    assert b.get(f"/v1/accounts/{other}").json()["balance"] == 0
    # A transfer within a's shard, sent to b: forwarded to a, done.
    neighbour = next(m for m in made if m.startswith("US-0-") and m != account)
    within = b.post("/v1/transfers", json={"id": "t-2", "from_account_id": account, "to_account_id": neighbour,
                                           "amount": 10, "currency": "USD"})  # fmt: skip
    assert within.status_code == 201, within.text
    assert a.get(f"/v1/accounts/{neighbour}").json()["balance"] == 10

    a_proc.send_signal(signal.SIGKILL)
    a_proc.wait(10)
    down = b.post(f"/v1/accounts/{account}/credits", json={"id": "fwd-3", "amount": 1})
    assert down.status_code == 503 and down.headers.get("retry-after"), down.text
    assert down.json()["code"] == "unavailable"
