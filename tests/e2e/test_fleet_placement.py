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
from fleet_nodes import Fleet, fleet_books, new_account

from balance import cli
from balance.bootstrap import storage_of_database
from balance.directory.sqlite import FILE_NAME, SqliteDirectory
from balance.domain.ids import client_account_suffix
from balance.engine.shard import ShardEngine

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


def test_a_creation_under_a_client_id_whose_account_has_an_override_is_made_and_served_there(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The account a client id names (its id says shard 0) has an override to shard 1: its
    creation through either node is made on shard 1 (node b), its retries replay it, and
    every request for it is served there: an account living elsewhere than its id says."""
    client_id = next(f"cid-{i}" for i in range(100) if int(client_account_suffix(None, f"cid-{i}"), 16) % 2 == 0)
    suffix = client_account_suffix(None, client_id)
    account = f"US-0-{suffix}"
    _set(tmp_path, {account: 1})
    body = {"kind": "partner", "region": "US", "currency": "USD", "client_id": client_id}
    with fleet.client("a") as a, fleet.client("b") as b:
        deadline = time.monotonic() + 3 * LEARNT_WITHIN_S
        while (made := a.post("/v1/accounts", json=body)).status_code == 503:  # b not yet known to a
            assert time.monotonic() < deadline, made.text
            time.sleep(0.1)
        assert made.status_code == 201 and made.json()["id"] == account, made.text
        again = b.post("/v1/accounts", json=body)
        assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true", again.text
        assert a.post(f"/v1/accounts/{account}/credits", json={"id": "c1", "amount": 9}).status_code == 201
        assert (
            a.get(f"/v1/accounts/{account}").json()["balance"]
            == b.get(f"/v1/accounts/{account}").json()["balance"]
            == 9
        )
    fleet.stop()
    books = asyncio.run(fleet_books(tmp_path))
    assert books[account] == ("USD", 9, 0)
    engine_shard_1 = asyncio.run(_accounts_of(tmp_path, 1))
    assert account in engine_shard_1 and account not in asyncio.run(_accounts_of(tmp_path, 0))


async def _accounts_of(tmp_path: Path, shard: int) -> set[str]:
    engine = ShardEngine(shard, storage_of_database(str(tmp_path / f"shard-{shard}.db")))
    await engine.start()
    try:
        return set(engine.ledger.accounts)
    finally:
        await engine.stop(checkpoint=False)
