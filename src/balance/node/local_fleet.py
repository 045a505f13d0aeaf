"""``make fleet`` (``balance-service fleet``): a local fleet for a newcomer to try.

Three nodes on 127.0.0.1, ports ``BALANCE_FLEET_BASE_PORT`` (8081), +1, +2; six shards on the
MariaDB server of ``BALANCE_DB_URL`` (default ``mysql://root@127.0.0.1:3306/balance_fleet``:
databases ``balance_fleet_s0`` .. ``_s5``, the directory in ``balance_fleet_directory``), two
per node, each with the next node as its standby. ``BALANCE_ADMIN_KEY`` is used if set (else
one is made and printed). Ctrl-C or SIGTERM stops every node it started.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from balance.directory.mariadb import MariaDbDirectory
from balance.directory.records import ShardRecord
from balance.storage.mariadb_url import parse_server, redacted, with_database

NODES = 3
SHARDS = 6
DEFAULT_DB_URL = "mysql://root@127.0.0.1:3306/balance_fleet"
READY_TIMEOUT_S = 60.0


async def place_shards(directory_url: str, db_url: str, nodes: list[str]) -> None:
    """The six shards, two per node, each node's standby the next one (kept if already there)."""
    directory = MariaDbDirectory(directory_url)
    await directory.open()
    try:
        known = {shard.id for shard in await directory.shards()}
        name = parse_server(db_url).database
        for shard in range(SHARDS):
            owner = nodes[shard * NODES // SHARDS]
            standby = nodes[(shard * NODES // SHARDS + 1) % NODES]
            if shard not in known:
                database = with_database(db_url, f"{name}_s{shard}")
                await directory.add_shard(ShardRecord(shard, "US", database, owner, standby))
            else:
                await directory.assign(shard, owner, standby)
    finally:
        await directory.close()


def main() -> int:
    db_url = os.environ.get("BALANCE_DB_URL") or DEFAULT_DB_URL
    try:
        name = parse_server(db_url).database or "balance_fleet"
    except ValueError as exc:
        print(f"balance-service fleet: {exc}", file=sys.stderr)
        return 1
    db_url = with_database(db_url, name)
    base_port = int(os.environ.get("BALANCE_FLEET_BASE_PORT") or 8081)
    admin_key = os.environ.get("BALANCE_ADMIN_KEY") or "adm_" + secrets.token_urlsafe(32)
    directory_url = with_database(db_url, f"{name}_directory")
    nodes = [f"node{i + 1}" for i in range(NODES)]
    asyncio.run(place_shards(directory_url, db_url, nodes))
    data_dir = Path(os.environ.get("BALANCE_DATA_DIR") or "./data") / "fleet"
    secret = secrets.token_urlsafe(24)
    processes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    urls = []
    try:
        for i, node in enumerate(nodes):
            port = base_port + i
            url = f"http://127.0.0.1:{port}"
            env = {
                **os.environ, "BALANCE_NODE_ID": node, "BALANCE_NODE_URL": url, "BALANCE_HOST": "127.0.0.1",
                "BALANCE_PORT": str(port), "BALANCE_DIRECTORY_URL": directory_url, "BALANCE_ADMIN_KEY": admin_key,
                "BALANCE_FLEET_SECRET": secret, "BALANCE_DATA_DIR": str(data_dir / node),
            }  # fmt: skip
            processes.append(subprocess.Popen([sys.executable, "-m", "balance", "run"], env=env))
            urls.append(url)
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(urls)
        while waiting and not stopping and time.monotonic() < deadline:
            for url in sorted(waiting):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        waiting.discard(url)
                except httpx.TransportError:
                    pass
            if any(proc.poll() is not None for proc in processes):
                print("balance-service fleet: a node exited; stopping the others", file=sys.stderr)
                return 1
            time.sleep(0.2)
        if waiting and not stopping:
            print(f"balance-service fleet: not ready in {READY_TIMEOUT_S:g}s: {sorted(waiting)}", file=sys.stderr)
            return 1
        if not stopping:
            print(
                f"\nfleet ready: {SHARDS} shards on {redacted(db_url)}_s0..{SHARDS - 1}, directory {redacted(directory_url)}"
            )
            for node, url in zip(nodes, urls, strict=True):
                print(f"  {node}: {url}")
            if not os.environ.get("BALANCE_ADMIN_KEY"):
                print(f"admin key (BALANCE_ADMIN_KEY was not set): {admin_key}")
            print("Ctrl-C stops the fleet.", flush=True)
        reported: set[str] = set()
        while not stopping:  # a node that exits is reported; the others go on (its standby takes its shards)
            for node, proc in zip(nodes, processes, strict=True):
                if proc.poll() is not None and node not in reported:
                    reported.add(node)
                    print(f"{node} exited ({proc.returncode}); its shards go to their standby after the lease",
                          file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(0.2)
        return 0
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print("fleet stopped", flush=True)
