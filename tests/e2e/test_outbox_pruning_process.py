"""The real server process without a broker (the embedded default) prunes its outbox: started
again with a short retention, the account facts older than it are gone from the shard file
(journal rows all kept), and the feed answers a cursor from before them 410 cursor_expired."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx
from tests.e2e.service_process import free_port, start_ready

ADMIN_KEY = "adm_prune_" + uuid.uuid4().hex


def counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        journal = conn.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
        outbox = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    return int(journal), int(outbox)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_the_service_prunes_old_outbox_rows_and_expires_older_cursors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCE_")}
    env.update(
        BALANCE_DATA_DIR=str(tmp_path), BALANCE_ADMIN_KEY=ADMIN_KEY, BALANCE_SHARDS="1",
        BALANCE_HOST="127.0.0.1", BALANCE_PORT=str(free_port()),
    )  # fmt: skip
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    proc, url = start_ready(env, tmp_path / "first.log")
    try:
        with httpx.Client(base_url=url, headers=headers) as client:
            new = {"kind": "partner", "region": "EU", "currency": "EUR"}
            ids = [client.post("/v1/accounts", json={**new, "name": f"a{n}"}).json()["id"] for n in range(5)]
            for n, account_id in enumerate(ids):
                credited = client.post(f"/v1/accounts/{account_id}/credits", json={"id": f"cr-{n}", "amount": 10 + n})
                assert credited.status_code == 201, credited.text
            assert client.get("/v1/events?after=0").status_code == 200
    finally:
        stop(proc)
    shard = tmp_path / "shard-0.db"
    journal, outbox = counts(shard)
    assert journal >= 5 and outbox >= 5
    time.sleep(1.1)

    # Started again with a retention of one second: the first pass runs once the shard is up.
    env.update(BALANCE_EVENTS_RETENTION_S="1", BALANCE_PORT=str(free_port()))
    proc, url = start_ready(env, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 15
        while counts(shard)[1] > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counts(shard) == (journal, 1)  # every account fact but the newest row; the journal whole
        with httpx.Client(base_url=url, headers=headers) as client:
            expired = client.get("/v1/events?after=0")
            assert expired.status_code == 410, expired.text
            assert expired.json()["code"] == "cursor_expired"
            oldest = expired.json()["oldest_cursor"]
            page = client.get(f"/v1/events?after={oldest}")
            assert page.status_code == 200
            assert client.get("/v1/events").json() == page.json()
    finally:
        stop(proc)
