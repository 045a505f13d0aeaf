"""Routing by the directory's placement overrides, on two real nodes (shard 0 on node a,
shard 1 on node b, SQLite files and directory): an override written in the directory makes
every node route that account to the override's shard within two seconds, and its removal
brings it back to the shard its id names.

The account's data is not moved here (that is the partner move's job, a later issue): the
account, created on shard 0 and overridden to shard 1, is answered 404 by shard 1's owner,
which shows the request went there; nothing is written anywhere meanwhile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fleet_nodes import Fleet, new_account

from balance import cli
from balance.directory.sqlite import FILE_NAME, SqliteDirectory

LEARNT_WITHIN_S = 2.0


def _set(tmp_path: Path, placements: dict[str, int] | None, removed: list[str] | None = None) -> None:
    async def write() -> None:
        directory = SqliteDirectory(tmp_path / FILE_NAME)
        await directory.open()
        if placements:
            await directory.set_placements(placements, int(time.time() * 1000))
        if removed:
            await directory.remove_placements(removed, int(time.time() * 1000))

    asyncio.run(write())


def _until(client: httpx.Client, path: str, status: int, since: float) -> float:
    """Seconds from ``since`` until ``path`` answers ``status`` (fails after 3x the bound)."""
    while (seen := client.get(path)).status_code != status:
        assert time.monotonic() - since < 3 * LEARNT_WITHIN_S, f"{path}: still {seen.status_code} {seen.text}"
        time.sleep(0.05)
    return time.monotonic() - since


def test_an_override_in_the_directory_routes_the_account_to_its_shard_on_every_node(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fleet.client("a") as a, fleet.client("b") as b:
        account = new_account(a, 0)  # on shard 0: node a
        other = new_account(a, 0)
        assert a.post(f"/v1/accounts/{account}/credits", json={"id": "c1", "amount": 70}).status_code == 201
        path = f"/v1/accounts/{account}"
        assert a.get(path).status_code == b.get(path).status_code == 200  # b forwards to a

        _set(tmp_path, {account: 1})
        written = time.monotonic()
        learnt = [_until(client, path, 404, written) for client in (a, b)]
        assert max(learnt) <= LEARNT_WITHIN_S, learnt
        # Node a forwards it to b (shard 1's owner), which does not have it: its 404.
        via_a = a.get(path)
        assert via_a.status_code == 404 and via_a.json()["code"] == "account_not_found"
        assert via_a.content == b.get(path).content
        refused = a.post(f"/v1/accounts/{account}/credits", json={"id": "c2", "amount": 5})
        assert refused.status_code == 404, refused.text  # not credited on shard 0 behind the override
        child = a.post("/v1/accounts", json={"kind": "user", "parent_id": account, "name": "kid"})
        assert child.status_code == 404, child.text  # a child goes where its parent lives (shard 1)
        assert a.get(f"/v1/accounts/{other}").status_code == 200  # other accounts of shard 0 stay
        capsys.readouterr()
        assert cli.main(["partners", "where", account]) == 0
        shown = capsys.readouterr().out
        assert "moved there (directory override)" in shown and f"{account}  1 " in shown

        _set(tmp_path, None, [account])
        removed = time.monotonic()
        assert max(_until(client, path, 200, removed) for client in (a, b)) <= LEARNT_WITHIN_S
        assert a.get(path).json()["balance"] == b.get(path).json()["balance"] == 70  # c2 never applied
        assert a.post(f"/v1/accounts/{account}/credits", json={"id": "c2", "amount": 5}).status_code == 201


def test_a_node_started_after_the_override_routes_by_it_from_its_first_request(fleet: Fleet, tmp_path: Path) -> None:
    """A node loads every override at start, before it serves."""
    with fleet.client("a") as a:
        account = new_account(a, 0)
    _set(tmp_path, {account: 1})
    fleet.kill("b")
    fleet.start("b")
    with fleet.client("b") as b:
        answer = b.get(f"/v1/accounts/{account}")  # b owns shard 1: answered there, not forwarded to a
        assert answer.status_code == 404 and answer.json()["code"] == "account_not_found", answer.text
