"""Three real nodes over six MariaDB shard databases (``make fleet``'s placement: two shards
per node, the next node standby), a bank workload (credits, debits, transfers between any
two accounts, holds naming another account captured at once: mostly across shards and
nodes) sent through random nodes while one node is
SIGKILLed and later restarted: its shards are taken over by their standby. Afterwards:
every acknowledged operation is there exactly once (a transfer in both accounts), each
balance is what its own history adds up to, and once the transfers in flight are finished
the money is conserved across the fleet (the balances sum to the credits minus the debits)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_process import free_port, start_ready

from balance.directory.mariadb import MariaDbDirectory
from balance.node.local_fleet import place_shards
from balance.storage.mariadb_url import parse_server, with_database

pytestmark = pytest.mark.mariadb
ADMIN_KEY = "adm_fleet_load_" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
NODES = ["node1", "node2", "node3"]
ACCOUNTS = 12
SECRET = "fleet_" + uuid.uuid4().hex


@pytest.fixture
def processes() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


class Load:
    def __init__(self, urls: dict[str, str], accounts: list[str]) -> None:
        self.urls, self.accounts = urls, accounts
        self.acknowledged: dict[str, tuple[str, ...]] = {}  # op id -> the accounts it is in
        self.answers: dict[int, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(6)]

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        clients = {node: httpx.Client(base_url=url, headers=HEADERS, timeout=30) for node, url in self.urls.items()}
        n = 0
        while not self.stop.is_set():
            n += 1
            account, other = rng.sample(self.accounts, 2)
            node, roll, amount = rng.choice(NODES), rng.random(), rng.randint(1, 9)
            op = f"w{worker}.{n}"
            if roll < 0.5:
                path, body, accounts = f"/v1/accounts/{account}/credits", {"id": op, "amount": amount}, (account,)
            elif roll < 0.65:
                path, body, accounts = f"/v1/accounts/{account}/debits", {"id": op, "amount": amount}, (account,)
            elif roll < 0.8:  # a hold naming ``other``, then its capture (acknowledged: the capture)
                hold = {"id": op, "amount": amount, "destination_account_id": other}
                try:
                    placed = clients[node].post(f"/v1/accounts/{account}/holds", json=hold)
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if placed.status_code != 201:
                    with self.lock:
                        self.answers[placed.status_code] = self.answers.get(placed.status_code, 0) + 1
                    continue
                path, body, accounts = f"/v1/accounts/{account}/holds/{op}/capture", {}, (account, other)
            else:
                path, accounts = "/v1/transfers", (account, other)
                body = {"id": op, "from_account_id": account, "to_account_id": other, "amount": amount,
                        "currency": "USD"}  # fmt: skip
            try:
                r = clients[node].post(path, json=body)
            except httpx.TransportError:
                time.sleep(0.05)  # that node is down
                continue
            with self.lock:
                self.answers[r.status_code] = self.answers.get(r.status_code, 0) + 1
                if r.status_code in (200, 201):
                    self.acknowledged[op] = accounts
        for client in clients.values():
            client.close()


def history(client: httpx.Client, account: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/v1/accounts/{account}/transactions", params=params)
        assert r.status_code == 200, r.text
        rows += r.json()["data"]
        cursor = r.json().get("next_cursor")
        if not cursor:
            return rows


def signed(txn: dict[str, Any]) -> int:
    """What a row did to the balance (a hold, its release or expiry only set money aside)."""
    if txn["kind"] in ("hold", "release", "expire"):
        return 0
    return int(txn["amount"]) if txn["direction"] == "credit" else -int(txn["amount"])


def retrying(fn: Any, *args: Any, **kwargs: Any) -> httpx.Response:
    for _ in range(200):
        r = fn(*args, **kwargs)
        if r.status_code != 503:
            return r
        time.sleep(0.1)
    return r


def test_a_node_killed_under_load_loses_nothing_acknowledged(
    fleet_db: str, tmp_path: Path, processes: dict[str, subprocess.Popen[bytes]]
) -> None:
    directory_url = with_database(fleet_db, f"{parse_server(fleet_db).database}_directory")
    asyncio.run(place_shards(directory_url, fleet_db, NODES))
    envs = {}
    for node in NODES:
        port = free_port()
        envs[node] = {**os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port),
                      "BALANCE_DATA_DIR": str(tmp_path / node), "BALANCE_ADMIN_KEY": ADMIN_KEY,
                      "BALANCE_DIRECTORY_URL": directory_url, "BALANCE_NODE_ID": node,
                      "BALANCE_NODE_URL": f"http://127.0.0.1:{port}", "BALANCE_FLEET_SECRET": SECRET,
                      "BALANCE_LEASE_S": "2", "BALANCE_CHECKPOINT_INTERVAL_S": "0.5"}  # fmt: skip
        processes[node], _ = start_ready(envs[node], tmp_path / f"{node}.log")
    urls = {node: f"http://127.0.0.1:{envs[node]['BALANCE_PORT']}" for node in NODES}
    first = httpx.Client(base_url=urls["node1"], headers=HEADERS, timeout=30)
    accounts = []
    while len({a.split("-")[1] for a in accounts}) < 6 or len(accounts) < ACCOUNTS:
        body = {"kind": "user", "region": "US", "currency": "USD", "name": "u", "credit_limit": 10**6}
        r = retrying(first.post, "/v1/accounts", json=body)
        assert r.status_code == 201, r.text
        accounts.append(r.json()["id"])
        assert len(accounts) < 200

    load = Load(urls, accounts)
    for t in load.threads:
        t.start()
    time.sleep(2)
    processes["node2"].send_signal(signal.SIGKILL)  # owner of shards 2 and 3; node3 is their standby
    processes["node2"].wait(10)
    time.sleep(6)
    processes["node2"], _ = start_ready(envs["node2"], tmp_path / "node2.log")
    time.sleep(3)
    load.stop.set()
    for t in load.threads:
        t.join(60)

    async def owners() -> dict[int, str]:
        directory = MariaDbDirectory(directory_url)
        await directory.open()
        try:
            return {o.shard_id: o.node_id for o in await directory.ownerships()}
        finally:
            await directory.close()

    taken = asyncio.run(owners())
    assert taken[2] == taken[3] == "node3", taken  # taken over by the standby
    print(f"\nanswers {load.answers}, acknowledged {len(load.acknowledged)}")
    assert load.answers.get(201, 0) > 100

    # Once the transfers in flight are finished (by their source node, in the background),
    # the balances add up to the credits minus the debits: nothing created, nothing lost.
    deadline = time.monotonic() + 30
    while True:
        histories = {account: history(first, account) for account in accounts}
        balances = {account: retrying(first.get, f"/v1/accounts/{account}").json()["balance"] for account in accounts}
        outside = sum(signed(t) for rows in histories.values() for t in rows if t["kind"] in ("credit", "debit"))
        if sum(balances.values()) == outside:
            break
        assert time.monotonic() < deadline, f"money in transit never arrived: {sum(balances.values())} != {outside}"
        time.sleep(0.5)
    for account in accounts:
        rows = [(t["kind"], t["operation_id"]) for t in histories[account]]
        assert len(rows) == len(set(rows)), f"an operation twice in {account}"
        ids = {t["operation_id"] for t in histories[account] if t["kind"] != "hold"}
        mine = {op for op, where in load.acknowledged.items() if account in where}
        assert mine <= ids, f"acknowledged operations missing from {account}: {sorted(mine - set(ids))[:5]}"
        assert balances[account] == sum(signed(t) for t in histories[account]), account
    first.close()
