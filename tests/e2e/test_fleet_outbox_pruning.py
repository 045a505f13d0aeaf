"""Fleet nodes without a broker prune the outbox of the shards they own (``relay.node_pruner``).

Two real nodes over SQLite shard files (node a owns shard 0, its standby b; node b owns shard
1), ``BALANCE_EVENTS_RETENTION_S=1`` and no broker. Money moves on both shards (accounts,
credits, holds exhausting an account, captures, releases, a renamed account, a transfer across
the nodes): account facts pile up in both outboxes. Started again past the retention, each
node prunes its own shard (read from the shard files directly: every outbox row but the
newest gone, the watermark raised, every journal row kept). Then node a stops, b takes shard 0
over and prunes what was written there since. The books balance over the fleet."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
from fleet_nodes import Fleet, fleet_books, new_account

from balance import cli


def counts(path: Path) -> tuple[int, int, int]:
    """(journal rows, outbox rows, the pruned watermark) of a shard file."""
    with sqlite3.connect(path, timeout=10) as conn:
        journal = conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
        outbox = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        mark = conn.execute("SELECT value FROM meta WHERE name = 'events_pruned'").fetchone()
    return int(journal), int(outbox), 0 if mark is None else int(mark[0])


def outbox_is(path: Path, rows: int) -> bool:
    return counts(path)[1] == rows


def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def money(client: httpx.Client, shard: int, tag: str) -> str:
    """Accounts and money on ``shard``: each step writes journal rows, most an outbox row too."""
    account = new_account(client, shard)
    r = client.post(f"/v1/accounts/{account}/credits", json={"id": f"cr-{tag}", "amount": 1000})
    assert r.status_code == 201, r.text
    for n in range(3):  # the third exhausts the account (account.exhausted), the release lifts it
        r = client.post(f"/v1/accounts/{account}/holds", json={"id": f"h-{tag}-{n}", "amount": 400 if n < 2 else 200})
        assert r.status_code == 201, r.text
    assert client.post(f"/v1/accounts/{account}/holds/h-{tag}-0/capture", json={"amount": 150}).status_code == 200
    assert client.post(f"/v1/accounts/{account}/holds/h-{tag}-2/release", json={}).status_code == 200
    assert client.patch(f"/v1/accounts/{account}", json={"name": f"renamed-{tag}"}).status_code == 200
    return account


def test_nodes_without_a_broker_prune_their_shards_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    files = [tmp_path / f"shard-{shard}.db" for shard in (0, 1)]
    assert cli.main(["shards", "add", "0", "--database", str(files[0]), "--node", "a", "--standby", "b"]) == 0
    assert cli.main(["shards", "add", "1", "--database", str(files[1]), "--node", "b"]) == 0
    fleet = Fleet(tmp_path)
    for env in fleet.envs.values():
        env["BALANCE_EVENTS_RETENTION_S"] = "1"
        for name in ("BALANCE_AMQP_URL", "BALANCE_NATS_URL", "BALANCE_RELAY"):
            env.pop(name, None)
    try:
        fleet.start("a")
        fleet.start("b")
        with fleet.client("a") as a, fleet.client("b") as b:
            accounts = [money(a, 0, "a0"), money(b, 0, "b0"), money(a, 1, "a1"), money(b, 1, "b1")]
            transfer = {"id": "t1", "from_account_id": accounts[0], "to_account_id": accounts[2], "amount": 50,
                        "currency": "USD"}  # fmt: skip
            r = a.post("/v1/transfers", json=transfer)
            assert r.status_code == 201, r.text
        fleet.stop()
        before = [counts(path) for path in files]
        assert all(outbox >= 5 for _, outbox, _ in before), before  # account facts on both shards
        time.sleep(1.2)  # every one of them past the retention

        fleet.start("a")
        fleet.start("b")
        for path, (journal, _, _) in zip(files, before, strict=True):
            until(partial(outbox_is, path, 1), f"{path.name}'s outbox pruned")
            now = counts(path)
            assert now[0] == journal  # the journal whole
            assert now[2] > 0  # the watermark raised with the deletes
        logs = {node: (tmp_path / f"{node}.log").read_text() for node in ("a", "b")}
        assert "shard 0: pruning its outbox" in logs["a"] and "shard 1: pruning its outbox" not in logs["a"]
        assert "shard 1: pruning its outbox" in logs["b"] and "shard 0: pruning its outbox" not in logs["b"]

        # New account facts on shard 0, then its owner stops: the standby takes it over and prunes them.
        with fleet.client("a") as a:
            money(a, 0, "late")
        assert counts(files[0])[1] > 1
        time.sleep(1.2)
        fleet.procs["a"].terminate()
        assert fleet.procs["a"].wait(20) == 0
        until(lambda: counts(files[0])[1] == 1, "shard 0's outbox pruned by its new owner")
        assert "shard 0: pruning its outbox" in (tmp_path / "b.log").read_text()
        with fleet.client("b") as b:
            assert b.get(f"/v1/accounts/{accounts[0]}").status_code == 200  # b serves shard 0 now
            assert b.get("/v1/events").status_code == 503  # a node serves no feed (docs/fleet.md)
            journal_0 = counts(files[0])[0]
    finally:
        fleet.stop()
    assert counts(files[0])[0] >= journal_0
    books = asyncio.run(fleet_books(tmp_path))
    assert books[accounts[0]][1] == 1000 - 150 - 50 and books[accounts[2]][1] == 1000 - 150 + 50
    assert all(reserved == 400 for account, (_, _, reserved) in books.items() if account in accounts)
