"""``balance-service fleet`` (what ``make fleet`` runs), as a newcomer would use it: three
real nodes on consecutive ports, six shards on MariaDB. Accounts created through any node are
spread over the six shards; any node answers for any account; SIGTERM stops every node."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.mariadb
ADMIN_KEY = "adm_make_fleet_" + uuid.uuid4().hex
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def free_base_port() -> int:
    """A port whose next two are free too, below the kernel's range of ephemeral ports: a port
    in that range that is free when probed can be taken by any outgoing connection (the
    nodes' own to MariaDB) before the node that should listen on it starts (seen: "cannot
    listen on 127.0.0.1:39140: address already in use")."""
    first_ephemeral = max(20004, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]))
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, first_ephemeral - 3)
        socks: list[socket.socket] = []
        try:
            for i in range(3):
                socks.append(socket.create_server(("127.0.0.1", base + i)))
        except OSError:
            continue  # one of the three is taken (those bound so far are closed below)
        finally:
            for sock in socks:
                sock.close()
        return base
    raise AssertionError("no three consecutive free ports")


def test_make_fleet_starts_three_nodes_that_spread_accounts_and_stop_together(fleet_db: str, tmp_path: Any) -> None:
    base = free_base_port()
    env = {**os.environ, "BALANCE_DB_URL": fleet_db, "BALANCE_FLEET_BASE_PORT": str(base),
           "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_DATA_DIR": str(tmp_path)}  # fmt: skip
    log = tmp_path / "fleet.log"
    with log.open("wb") as out:
        fleet = subprocess.Popen(
            [sys.executable, "-m", "balance", "fleet"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    urls = [f"http://127.0.0.1:{base + i}" for i in range(3)]
    try:
        deadline = time.monotonic() + 90
        while "fleet ready" not in log.read_text():
            assert fleet.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert all(url in log.read_text() for url in urls)
        clients = [httpx.Client(base_url=url, headers=HEADERS, timeout=30) for url in urls]
        accounts = []
        for i in range(60):
            r = clients[i % 3].post(
                "/v1/accounts", json={"kind": "user", "region": "US", "currency": "USD", "name": "u"}
            )
            assert r.status_code == 201, r.text
            accounts.append(r.json()["id"])
        shards = Counter(int(account.split("-")[1]) for account in accounts)
        assert set(shards) == set(range(6)), shards  # spread over the six shards
        for i, account in enumerate(accounts[:12]):
            assert (
                clients[(i + 1) % 3]
                .post(f"/v1/accounts/{account}/credits", json={"id": f"c{i}", "amount": 5})
                .status_code
                == 201
            )
            assert clients[(i + 2) % 3].get(f"/v1/accounts/{account}").json()["balance"] == 5
        for client in clients:
            client.close()
    finally:
        fleet.send_signal(signal.SIGTERM)
        assert fleet.wait(60) == 0, log.read_text()
    for url in urls:  # every node stopped
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)
