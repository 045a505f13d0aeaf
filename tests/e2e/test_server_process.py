"""``balance-service run`` as a real process, on the built-in HTTP server and on uvicorn: it
serves, and SIGTERM stops it cleanly after a last checkpoint, so the tables hold
what the journal holds and the next start finds everything.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from service_process import free_port, start_ready

ADMIN_KEY = "process-admin"


def start(data_dir: Path, server: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": ADMIN_KEY,
        "BALANCE_DATA_DIR": str(data_dir), "BALANCE_HTTP_SERVER": server,
        "BALANCE_CHECKPOINT_INTERVAL_S": "3600",  # no periodic checkpoint: only the one at stop
    }  # fmt: skip
    env.pop("BALANCE_DB_URL", None)
    return start_ready(env, log)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.parametrize("server", ["builtin", "uvicorn"])
def test_run_serves_and_stops_cleanly_with_a_last_checkpoint(tmp_path: Path, server: str) -> None:
    log = tmp_path / "server.log"
    data = tmp_path / "data"
    proc, url = start(data, server, log)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as http:
            created = http.post("/v1/accounts", json={"kind": "partner", "region": "US", "currency": "USD"})
            assert created.status_code == 201, created.text
            account = created.json()["id"]
            assert http.post(f"/v1/accounts/{account}/credits", json={"id": "c1", "amount": 500}).status_code == 201
            held = http.post(f"/v1/accounts/{account}/holds", json={"id": "h1", "amount": 200})
            assert held.status_code == 201, held.text
            assert held.headers["content-type"] == "application/json"
    finally:
        code = stop(proc)
    # uvicorn re-raises the signal after its graceful shutdown, so its exit status says SIGTERM.
    assert code == (0 if server == "builtin" else -signal.SIGTERM), log.read_text()
    with sqlite3.connect(data / "shard-0.db") as db:  # what the last checkpoint wrote
        balance, reserved = db.execute("SELECT balance, reserved FROM accounts WHERE id = ?", (account,)).fetchone()
        holds = db.execute("SELECT id, amount FROM holds WHERE account_id = ?", (account,)).fetchall()
    assert (balance, reserved) == (500, 200)
    assert holds == [("h1", 200)]
    proc, url = start(data, server, log)
    try:
        state = httpx.get(f"{url}/v1/accounts/{account}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        assert (state["balance"], state["reserved"], state["available"]) == (500, 200, 300)
    finally:
        assert stop(proc) == (0 if server == "builtin" else -signal.SIGTERM), log.read_text()
