"""Partner moves on a real process (``balance-service run``, two SQLite shards): a partner with
200 children under holds, captures, releases and transfers from 4 HTTP clients, moved to the
other shard by ``balance-service partners move`` while the load runs; then moved back with the
process SIGKILLed mid-move and restarted. Afterwards: the move is finished or rolled back
(``partners where`` says which), every acknowledged operation replays its first answer, each
currency sums to zero over both shards, reserved is the sum of the pending holds, and each
account lives on exactly one shard."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from service_process import free_port, start_ready

ADMIN_KEY = "adm_move_" + uuid.uuid4().hex
CHILDREN = 200
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def environment(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BALANCE_")}
    env.update({
        "BALANCE_DATA_DIR": str(tmp_path / "data"), "BALANCE_ADMIN_KEY": ADMIN_KEY, "BALANCE_HOST": "127.0.0.1",
        "BALANCE_PORT": str(free_port()), "BALANCE_SHARDS": "2", "BALANCE_RELAY": "off", "BALANCE_RESULTS": "off",
        "BALANCE_EXPIRY_JOB": "off",
    })  # fmt: skip
    return env


async def load(client: httpx.AsyncClient, kids: list[str], n: int, stop: asyncio.Event, acked: list[Any]) -> None:
    rng, held, i = random.Random(n), [], 0
    while not stop.is_set():
        i += 1
        kid, op = rng.choice(kids), f"c{n}-{i}"
        pick = rng.random()
        if pick < 0.4 or not held:
            url, body = f"/v1/accounts/{kid}/holds", {"id": op, "amount": rng.randint(1, 40), "expires_in_s": 3600}
        elif pick < 0.6:
            account_id, hold_id = held.pop(rng.randrange(len(held)))
            url, body = f"/v1/accounts/{account_id}/holds/{hold_id}/capture", {}
        elif pick < 0.8:
            account_id, hold_id = held.pop(rng.randrange(len(held)))
            url, body = f"/v1/accounts/{account_id}/holds/{hold_id}/release", {}
        else:
            to = rng.choice(kids)
            url, body = "/v1/transfers", {"id": op, "from_account_id": kid, "to_account_id": to, "amount": 3,
                                          "currency": "EUR"}  # fmt: skip
        try:
            reply = await client.post(url, json=body, headers=HEADERS)
        except httpx.TransportError:
            return  # the process was killed
        if reply.status_code < 300:
            acked.append((url, body, reply.status_code, reply.content))
            if url.endswith("/holds"):
                held.append((kid, op))
        else:
            assert reply.status_code in (409, 422), reply.text


def audit(data: Path) -> dict[str, str]:
    """Both shards' tables after a clean stop (the last checkpoint wrote every row): where each
    account lives, and the books."""
    totals: dict[str, int] = {}
    live: dict[str, str] = {}
    for db in sorted(data.glob("shard-*.db")):
        conn = sqlite3.connect(db)
        for account_id, currency, balance, reserved, status in conn.execute(
            "SELECT id, currency, balance, reserved, status FROM accounts"
        ):
            totals[currency] = totals.get(currency, 0) + int(balance)
            pending = conn.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE account_id = ? AND status = 'pending'", (account_id,)
            ).fetchone()[0]
            assert reserved == pending, (db.name, account_id)
            if status != "moved":
                assert account_id not in live, f"{account_id} lives on two shards"
                live[account_id] = db.name
        conn.close()
    assert set(totals.values()) == {0}, totals
    return live


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "balance", "partners", *args], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


async def test_a_partner_moves_under_load_and_survives_a_sigkill_mid_move(tmp_path: Path) -> None:
    env = environment(tmp_path)
    proc, url = start_ready(env, tmp_path / "service.log")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            root = (await client.post("/v1/accounts", json={"kind": "partner", "region": "EU", "currency": "EUR",
                                                            "name": "p"}, headers=HEADERS)).json()["id"]  # fmt: skip
            kids = []
            for i in range(CHILDREN):
                reply = await client.post("/v1/accounts", json={"parent_id": root, "kind": "user", "name": f"k{i}"},
                                          headers=HEADERS)  # fmt: skip
                kids.append(reply.json()["id"])
                credit = await client.post(f"/v1/accounts/{kids[-1]}/credits", json={"id": f"s{i}", "amount": 5_000},
                                           headers=HEADERS)  # fmt: skip
                assert credit.status_code == 201
            start_shard = cli(env, "where", root)["shard"]
            stop, acked = asyncio.Event(), []  # type: ignore[var-annotated]
            clients = [asyncio.create_task(load(client, kids, n, stop, acked)) for n in range(4)]
            await asyncio.sleep(0.5)
            moved = await asyncio.to_thread(cli, env, "move", root, "--to-shard", str(1 - start_shard))
            assert moved["status"] == "done" and moved["accounts"] == CHILDREN + 1 and moved["holds"] > 0, moved
            assert cli(env, "where", kids[9]) == {"account_id": kids[9], "shard": 1 - start_shard,
                                                  "moved": start_shard == 0}  # fmt: skip
            await asyncio.sleep(0.5)
            back = asyncio.create_task(client.post(f"/v1/partners/{root}/move", json={"to_shard": start_shard},
                                                   headers=HEADERS))  # fmt: skip
            await asyncio.sleep(random.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            try:
                await back
            except httpx.TransportError:
                pass
        assert len(acked) > 50
        proc, url = start_ready(env, tmp_path / "service.log")  # resumes the move before it is ready
        where = cli(env, "where", root)["shard"]
        assert where in (0, 1)
        assert all(cli(env, "where", kid)["shard"] == where for kid in kids[:5])
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for path, body, status, content in acked:  # every acknowledged operation, exactly once
                again = await client.post(path, json=body, headers=HEADERS)
                assert (again.status_code, again.content) == (status, content), path
                assert again.headers.get("idempotent-replayed") == "true"
            for kid in kids[:20]:  # history over both shards, a page of 7 at a time: complete, nothing twice
                listed, cursor = [], None
                while True:
                    query = f"?limit=7&cursor={cursor}" if cursor else "?limit=7"
                    page = (await client.get(f"/v1/accounts/{kid}/transactions{query}", headers=HEADERS)).json()
                    listed += [(t["kind"], t["operation_id"], t["created_at"]) for t in page["data"]]
                    if (cursor := page["next_cursor"]) is None:
                        break
                assert len(listed) == len(set(listed)), kid
                placed = {t[1] for t in listed if t[0] == "hold"}
                assert {body["id"] for path, body, _, _ in acked if path == f"/v1/accounts/{kid}/holds"} <= placed
                assert ("credit", f"s{kids.index(kid)}") in {(t[0], t[1]) for t in listed}
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        live = audit(tmp_path / "data")
        assert {live[kid] for kid in kids} == {f"shard-{where}.db"}
        assert not list((tmp_path / "data" / "moves").glob("*.json"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
