"""A partner move across two real nodes over MariaDB (shard databases and directory): node a,
the owner of the source shard, is SIGKILLed right after the move out committed and is never
started again. Node b, the source shard's standby, takes it over (fences its database,
recovers) and finds the move in the shard's own ``moves`` table: it sends the subtree to the
target (its own shard), writes the switch, records ``done``. Every first answer replays
through b, the record's export is emptied, each shard recovered afresh balances."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncmy
import pytest
from fleet_nodes import Fleet, fleet_books, new_account

from balance import cli
from balance.storage.mariadb_url import connect_kwargs, parse_server, with_database

pytestmark = pytest.mark.mariadb


async def moves_of(url: str, database: str) -> list[tuple[str, str, int]]:
    """(move id, step, bytes of export left) of each move recorded in a shard database."""
    conn = await asyncmy.connect(**connect_kwargs(url), database=database)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT move_id, MAX(CASE WHEN part = 0 THEN step END), SUM(LENGTH(data)) FROM moves GROUP BY move_id"
            )
            return [(str(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall()]
    finally:
        await conn.ensure_closed()


async def test_the_standby_finishes_a_move_its_dead_owner_moved_out(
    fleet_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = parse_server(fleet_db).database
    databases = [with_database(fleet_db, f"{name}_s{shard}") for shard in (0, 1)]
    directory = with_database(fleet_db, f"{name}_directory")
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BALANCE_DIRECTORY_URL", directory)

    def start() -> Fleet:
        assert cli.main(["shards", "add", "0", "--database", databases[0], "--node", "a", "--standby", "b"]) == 0
        assert cli.main(["shards", "add", "1", "--database", databases[1], "--node", "b"]) == 0
        fleet = Fleet(tmp_path)
        for node in ("a", "b"):
            fleet.envs[node]["BALANCE_DIRECTORY_URL"] = directory
        fleet.envs["a"]["BALANCE_FLEET_CRASH_AT"] = "move_moved_out"
        fleet.start("a")
        fleet.start("b")
        return fleet

    fleet = await asyncio.to_thread(start)

    def run() -> None:
        with fleet.client("a") as a:
            root = new_account(a, 0)
            kids = [a.post("/v1/accounts", json={"kind": "user", "parent_id": root, "name": f"k{i}"}).json()["id"]
                    for i in range(10)]  # fmt: skip
            firsts = []
            for i, kid in enumerate(kids):
                firsts.append(a.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 100}))
                firsts.append(a.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 7}))
                assert (firsts[-2].status_code, firsts[-1].status_code) == (201, 201)
        with fleet.client("b") as b:
            try:
                b.post(f"/v1/partners/{root}/move", json={"to_shard": 1})  # forwarded to a, which runs it
            except Exception:  # noqa: BLE001, S110 (a dies on the way)
                pass
            assert fleet.procs["a"].wait(15) == -9, "node a did not reach move_moved_out"
            assert [step for _, step, _ in asyncio.run(moves_of(fleet_db, f"{name}_s0"))] == ["moved_out"]
            deadline = time.monotonic() + 30
            while True:
                where = b.get(f"/v1/partners/{kids[0]}/placement").json().get("shard")
                steps = asyncio.run(moves_of(fleet_db, f"{name}_s0"))
                if where == 1 and [step for _, step, _ in steps] == ["done"]:
                    break
                assert time.monotonic() < deadline, (where, steps)
                time.sleep(0.2)
            assert steps[0][2] == 0  # the export's parts emptied
            for i, kid in enumerate(kids):
                credit = b.post(f"/v1/accounts/{kid}/credits", json={"id": f"s{i}", "amount": 100})
                hold = b.post(f"/v1/accounts/{kid}/holds", json={"id": f"h{i}", "amount": 7})
                assert (credit.content, hold.content) == (firsts[2 * i].content, firsts[2 * i + 1].content)
                assert credit.headers["idempotent-replayed"] == hold.headers["idempotent-replayed"] == "true"
            assert b.post(f"/v1/accounts/{kids[0]}/holds/h0/capture", json={}).status_code == 200
            assert b.get(f"/v1/accounts/{kids[1]}").json()["reserved"] == 7

    try:
        await asyncio.to_thread(run)
    finally:
        fleet.stop()
    books = await fleet_books(tmp_path, databases=databases)
    assert sum(1 for _, (_, balance, reserved) in books.items() if (balance, reserved) == (100, 7)) == 9
