"""Two real node processes over SQLite shard files and a SQLite directory in one data
directory (node a owns shard 0, node b shard 1): what the fleet tests share. ``fleet_books``
reads the shard files back after the nodes have stopped, through a fresh recovery each (which
checks the shard's invariants: reserved equals its pending holds), and checks that each
currency sums to zero over the fleet."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from service_process import free_port, start_ready

from balance import cli
from balance.bootstrap import storage_of_database
from balance.engine.shard import ShardEngine

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


class Fleet:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.envs = {node: node_env(tmp_path, node) for node in ("a", "b")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        self.procs[node], _ = start_ready(self.envs[node], self.tmp_path / f"{node}.log")

    def client(self, node: str) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.envs[node]['BALANCE_PORT']}", headers=HEADERS, timeout=30)

    def kill(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGKILL)
        self.procs[node].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)


def two_nodes_fleet(
    tmp_path: Path, *, standbys: dict[int, str] | None = None, crash_at: dict[str, str] | None = None
) -> Fleet:
    """The directory in ``tmp_path`` (``BALANCE_DATA_DIR`` set by the caller): shard 0 on node a,
    shard 1 on node b (``standbys``: shard -> its standby node); both nodes started
    (``crash_at``: node -> its ``BALANCE_FLEET_CRASH_AT``)."""
    for shard, node in ((0, "a"), (1, "b")):
        spare = ["--standby", standbys[shard]] if standbys and shard in standbys else []
        database = str(tmp_path / f"shard-{shard}.db")
        assert cli.main(["shards", "add", str(shard), "--database", database, "--node", node, *spare]) == 0
    fleet = Fleet(tmp_path)
    for node, point in (crash_at or {}).items():
        fleet.envs[node]["BALANCE_FLEET_CRASH_AT"] = point
    fleet.start("a")
    fleet.start("b")
    return fleet


def new_account(client: httpx.Client, shard: int) -> str:
    """A top-level account on ``shard`` (creations spread at random: until one lands there)."""
    for _ in range(200):
        r = client.post("/v1/accounts", json={"kind": "user", "region": "US", "currency": "USD", "name": "x"})
        if r.status_code == 201 and r.json()["id"].startswith(f"US-{shard}-"):
            return str(r.json()["id"])
        time.sleep(0.02)
    raise AssertionError(f"no account landed on shard {shard}")


def unfinished_moves(tmp_path: Path, shards: int = 2) -> list[tuple[int, str, str]]:
    """(shard, move id, step) of the partner moves not yet done nor rolled back, read from each
    shard's own record of its moves out (``domain.move_records``)."""
    found = []
    for shard in range(shards):
        conn = sqlite3.connect(tmp_path / f"shard-{shard}.db", timeout=10)
        try:
            rows = conn.execute(
                "SELECT move_id, step FROM moves WHERE part = 0 AND step NOT IN ('done', 'rolled_back')"
            ).fetchall()
        except sqlite3.OperationalError:  # (the table is made when the shard is first opened)
            rows = []
        finally:
            conn.close()
        found += [(shard, str(move_id), str(step)) for move_id, step in rows]
    return found


async def fleet_books(
    tmp_path: Path, shards: int = 2, databases: list[str] | None = None
) -> dict[str, tuple[str, int, int]]:
    """Every account of the fleet's shard files as (currency, balance, reserved), read by a
    fresh recovery of each (the nodes stopped): each shard's invariants hold, and each
    currency's balances sum to zero over the fleet (money in transit included)."""
    accounts: dict[str, tuple[str, int, int]] = {}
    totals: dict[str, int] = {}
    for shard in range(shards):
        database = str(tmp_path / f"shard-{shard}.db") if databases is None else databases[shard]
        engine = ShardEngine(shard, storage_of_database(database))
        await engine.start()
        try:
            engine.ledger.check_invariants()
            for account in engine.ledger.accounts.values():
                accounts[account.id] = (account.currency, account.balance, account.reserved)
                totals[account.currency] = totals.get(account.currency, 0) + account.balance
        finally:
            await engine.stop(checkpoint=False)
    assert all(total == 0 for total in totals.values()), f"balances do not sum to zero over the fleet: {totals}"
    return accounts
