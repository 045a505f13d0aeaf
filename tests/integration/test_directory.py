"""The shard directory on both adapters (a SQLite file, a real MariaDB database): records,
leases taken and renewed by compare-and-set on the epoch, and the operator commands."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncmy
import pytest

from balance import cli
from balance.directory.mariadb import MariaDbDirectory
from balance.directory.records import DirectoryError, NodeRecord, ShardDirectory, ShardRecord
from balance.directory.sql import SqlDirectory
from balance.directory.sqlite import SqliteDirectory
from balance.storage.mariadb_url import connect_kwargs, parse_server, with_database


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
async def directory_url(
    request: pytest.FixtureRequest, tmp_path: Path, mariadb_required: Callable[[], Awaitable[str]]
) -> AsyncIterator[str | None]:
    """None: the SQLite directory of ``tmp_path``; else a fresh MariaDB database, dropped after."""
    if request.param == "sqlite":
        yield None
        return
    url = await mariadb_required()
    name = f"{parse_server(url).database or 'balance_test'}_dir_{uuid.uuid4().hex[:8]}"
    yield with_database(url, name)
    conn = await asyncmy.connect(**connect_kwargs(url))
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        await conn.ensure_closed()


@pytest.fixture
async def directory(directory_url: str | None, tmp_path: Path) -> AsyncIterator[ShardDirectory]:
    d: ShardDirectory = (
        SqliteDirectory(tmp_path / "directory.db") if directory_url is None else MariaDbDirectory(directory_url)
    )
    await d.open()
    yield d
    await d.close()


async def test_shards_and_nodes_are_recorded(directory: ShardDirectory) -> None:
    await directory.add_shard(ShardRecord(1, "EU", "mysql://root@db1/b_s1", None, None))
    await directory.add_shard(ShardRecord(0, "US", "/data/shard-0.db", "n1", None))
    with pytest.raises(DirectoryError, match="exists"):
        await directory.add_shard(ShardRecord(0, "US", "other", None, None))
    await directory.assign(1, "n2", "n1")
    with pytest.raises(DirectoryError, match="no shard 7"):
        await directory.assign(7, "n2", None)
    assert await directory.shards() == [
        ShardRecord(0, "US", "/data/shard-0.db", "n1", None),
        ShardRecord(1, "EU", "mysql://root@db1/b_s1", "n2", "n1"),
    ]
    await directory.heartbeat(NodeRecord("n1", "http://a:1", "US", 5))
    await directory.heartbeat(NodeRecord("n1", "http://a:2", "US", 9))
    assert await directory.nodes() == [NodeRecord("n1", "http://a:2", "US", 9)]


async def test_a_lease_is_held_by_one_node_until_it_expires(directory: ShardDirectory) -> None:
    first = await directory.acquire(0, "n1", now_ms=1000, lease_ms=500)
    assert first is not None and first.epoch == 1
    assert await directory.acquire(0, "n2", now_ms=1400, lease_ms=500) is None  # live: refused
    renewed = await directory.renew(first, now_ms=1400, lease_ms=500)
    assert renewed is not None and renewed.lease_expires_at_ms == 1900
    taken = await directory.acquire(0, "n2", now_ms=2000, lease_ms=500)  # expired: taken, new epoch
    assert taken is not None and (taken.node_id, taken.epoch) == ("n2", 2)
    assert await directory.renew(renewed, now_ms=2001, lease_ms=500) is None  # the old owner lost it
    await directory.release(taken)
    again = await directory.acquire(0, "n1", now_ms=2002, lease_ms=500)
    assert again is not None and again.epoch == 3  # a restart takes a new epoch too
    assert [(o.shard_id, o.node_id, o.epoch) for o in await directory.ownerships()] == [(0, "n1", 3)]


async def test_racing_nodes_get_one_lease(directory: ShardDirectory) -> None:
    """Compare-and-set on the epoch: of nodes racing for an expired lease, one wins."""
    assert await directory.acquire(0, "n0", now_ms=0, lease_ms=10) is not None
    results = await asyncio.gather(*(directory.acquire(0, f"n{i}", now_ms=100, lease_ms=1000) for i in range(1, 6)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].epoch == 2
    results = await asyncio.gather(*(directory.acquire(1, f"n{i}", now_ms=100, lease_ms=1000) for i in range(1, 6)))
    assert len([r for r in results if r is not None]) == 1  # a first lease too (an INSERT)


async def _shards(directory: ShardDirectory, count: int) -> None:
    for shard in range(count):
        await directory.add_shard(ShardRecord(shard, "US", f"/data/shard-{shard}.db", None, None))


async def test_placement_overrides(directory: ShardDirectory) -> None:
    await _shards(directory, 6)
    assert await directory.placement_of("US-1-abc") is None
    await directory.set_placement("US-1-abc", 4, 10)
    await directory.set_placement("US-1-abc", 5, 11)
    assert await directory.placement_of("US-1-abc") == 5


async def test_placements_are_written_and_removed_in_bulk_and_read_as_changes(directory: ShardDirectory) -> None:
    """A moved subtree is one override per account, all in one version; a reader reading the
    changes since its last version learns of writes and removals, in order."""
    await _shards(directory, 3)
    assert await directory.placements_since(0) == (0, [])
    subtree = {"US-1-partner": 2, "US-1-child1": 2, "US-1-child2": 2}
    v1 = await directory.set_placements(subtree, 100)
    assert v1 >= 1
    version, changes = await directory.placements_since(0)
    assert version == v1 and sorted(changes) == sorted(subtree.items())
    assert await directory.placements_since(v1) == (v1, [])
    v2 = await directory.set_placements({"US-0-other": 1, "US-1-child2": 0}, 200)
    assert v2 == v1 + 1
    assert sorted((await directory.placements_since(v1))[1]) == [("US-0-other", 1), ("US-1-child2", 0)]
    v3 = await directory.remove_placements(["US-1-child1", "US-2-never-overridden"], 300)
    assert v3 == v2 + 1
    assert await directory.placements_since(v2) == (v3, [("US-1-child1", None)])
    assert await directory.placement_of("US-1-child1") is None
    assert await directory.placement_of("US-2-never-overridden") is None
    # A reader starting afresh replays every change: what is in force at the end.
    current: dict[str, int] = {}
    for account_id, shard in (await directory.placements_since(0))[1]:
        if shard is None:
            current.pop(account_id, None)
        else:
            current[account_id] = shard
    assert current == {"US-1-partner": 2, "US-1-child2": 0, "US-0-other": 1}


async def test_a_bad_placement_writes_nothing(directory: ShardDirectory) -> None:
    """All or none: an unknown shard or an id not of ours refuses the whole write."""
    await _shards(directory, 2)
    for bad in ({"US-0-a": 1, "US-0-b": 7}, {"US-0-a": 1, "not-an-id": 0}, {"US-0-a": 1, "US-0-" + "x" * 80: 0},
                {"US-0-a": -1}, {"US-0-a": True}):  # fmt: skip
        with pytest.raises(DirectoryError):
            await directory.set_placements(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(DirectoryError):
        await directory.set_placements({}, 1)
    with pytest.raises(DirectoryError):
        await directory.remove_placements(["ghost"], 1)
    assert await directory.placements_since(0) == (0, [])
    assert await directory.placement_of("US-0-a") is None


async def test_a_directory_made_before_versions_gets_the_column_at_open(directory: ShardDirectory) -> None:
    """A directory whose placements table predates ``version``: opened again, it is added (the
    overrides already there are version 0, which a node's first read, from -1, brings too)."""
    assert isinstance(directory, SqlDirectory)
    await _shards(directory, 2)
    await directory._execute("DROP TABLE directory_placements")
    await directory._execute(
        "CREATE TABLE directory_placements (account_id VARCHAR(64) NOT NULL PRIMARY KEY, shard_id INT NOT NULL,"
        " moved_at BIGINT NOT NULL)"
    )
    await directory._execute("INSERT INTO directory_placements VALUES ('US-0-old', 1, 5)")
    await directory.open()
    await directory.open()  # (twice: nothing to do the second time)
    version = await directory.set_placements({"US-0-new": 1}, 10)
    assert await directory.placement_of("US-0-old") == 1
    assert await directory.placements_since(0) == (version, [("US-0-new", 1)])
    assert await directory.placements_since(-1) == (version, [("US-0-old", 1), ("US-0-new", 1)])


async def test_concurrent_placement_writes_get_distinct_versions_in_commit_order(directory: ShardDirectory) -> None:
    """The counter is bumped inside each write's transaction: no two writes share a version,
    and every change is read exactly once by a reader following the versions."""
    await _shards(directory, 2)
    versions = await asyncio.gather(
        *(directory.set_placements({f"US-0-a{i}": 1, f"US-0-b{i}": 1}, i) for i in range(8))
    )
    assert sorted(versions) == list(range(1, 9))
    version, changes = await directory.placements_since(0)
    assert version == max(versions) and len(changes) == 16


def test_operator_commands(
    directory_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BALANCE_DATA_DIR", str(tmp_path))
    if directory_url is None:
        monkeypatch.delenv("BALANCE_DIRECTORY_URL", raising=False)
    else:
        monkeypatch.setenv("BALANCE_DIRECTORY_URL", directory_url)
    assert cli.main(["shards", "add", "0", "--database", "mysql://u:secret@db0:3306/b_s0", "--node", "n1"]) == 0
    assert cli.main(["shards", "add", "1", "--region", "EU", "--database", "mysql://u:secret@db1/b_s1"]) == 0
    assert cli.main(["shards", "add", "1", "--database", "x.db"]) == 1
    assert cli.main(["shards", "add", "2", "--database", "http://nope"]) == 1
    assert cli.main(["shards", "assign", "1", "n2", "--standby", "n1"]) == 0
    assert cli.main(["shards", "assign", "9", "n2"]) == 1
    capsys.readouterr()
    assert cli.main(["shards", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SHARD", "REGION", "DATABASE", "ASSIGNED", "STANDBY", "OWNER", "EPOCH", "LEASE"]
    assert out[1].split() == ["0", "US", "mysql://db0:3306/b_s0", "n1", "-", "-", "-", "-"]  # no password shown
    assert out[2].split() == ["1", "EU", "mysql://db1/b_s1", "n2", "n1", "-", "-", "-"]
    assert cli.main(["nodes", "list"]) == 0
    assert "(none)" in capsys.readouterr().out
    assert cli.main(["partners", "where", "EU-1-9f2c"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[:4] == ["EU-1-9f2c", "1", "EU", "mysql://db1/b_s1"] and "its id names" in row
    assert cli.main(["partners", "where", "not-an-id"]) == 1
    assert "not an account id" in capsys.readouterr().err


async def test_key_rows_are_read_back_by_when_they_were_written(directory: ShardDirectory) -> None:
    live = ("h1", "US-0-a", 5, "key_1", "bk_abcd", 3, None, None)
    await directory.put_keys([live], now_ms=100)
    await directory.put_keys([("h2", "US-1-b", 6, "key_2", "bk_efgh", 1, None, "c")], now_ms=200)
    assert [tuple(r) for r in await directory.keys_written_since(0)] == [
        (*live, 100),
        ("h2", "US-1-b", 6, "key_2", "bk_efgh", 1, None, "c", 200),
    ]
    await directory.put_keys([(*live[:6], 7, None)], now_ms=300)  # revoked: the row is rewritten
    assert [tuple(r) for r in await directory.keys_written_since(200)] == [(*live[:6], 7, None, 300)]
