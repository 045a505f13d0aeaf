"""The lease keeper of a node, in process, over a real SQLite directory and shard file: who
takes a shard, who gives it up, and that a takeover fences and recovers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from balance.directory.records import NodeRecord, ShardRecord
from balance.directory.sqlite import SqliteDirectory
from balance.domain import commands as c
from balance.engine.clock import system_clock
from balance.engine.recovery import Backoff
from balance.engine.shard import FENCED, ShardEngine
from balance.node.keeper import ShardKeeper
from balance.node.ports import NodeShard
from balance.storage.sqlite import SqliteShardStorage


def keeper(node_id: str, directory: SqliteDirectory, shard_file: Path) -> ShardKeeper:
    ports = [NodeShard(0, system_clock, Backoff())]

    def make_engine(shard: ShardRecord, epoch: int) -> ShardEngine:
        storage = SqliteShardStorage(shard_file)
        storage.fence_with(epoch)
        return ShardEngine(shard.id, storage)

    return ShardKeeper(NodeRecord(node_id, f"http://{node_id}", "US", 0), directory, ports, make_engine, lease_s=60)


async def settle(k: ShardKeeper) -> None:
    for task in list(k._starting.values()):
        await task


async def test_an_operator_reassignment_moves_the_shard_with_a_new_epoch(tmp_path: Path) -> None:
    directory = SqliteDirectory(tmp_path / "directory.db")
    await directory.open()
    await directory.add_shard(ShardRecord(0, "US", str(tmp_path / "shard-0.db"), "a", None))
    a, b = keeper("a", directory, tmp_path / "shard-0.db"), keeper("b", directory, tmp_path / "shard-0.db")
    await a.first_pass()
    await b.first_pass()
    assert set(a.owned) == {0} and not b.owned  # one writer
    a_port = a.ports[0]
    await a_port.start()
    create = c.CreateAccount("US-0-x", None, "partner", "US", "USD", "x", 0, b"{}")
    assert (await a_port.execute(create)).status == 201
    assert b.shard_elsewhere("US-0-x") == 0 and a.shard_elsewhere("US-0-x") is None

    await directory.assign(0, "b", None)
    await b.step()
    assert not b.owned  # a's lease (60 s) is live: b waits
    await a.step()  # a is no longer assigned: hands the shard over, lease released
    assert not a.owned and a_port.engine is None
    assert (await a_port.execute(c.Credit("US-0-x", "cr-1", 5))).status == 503
    await b.step()
    await settle(b)
    assert b.owned[0].epoch == 2 and b.ports[0].ready
    assert b.ports[0].account_state("US-0-x") is not None  # recovered what a wrote
    assert (await b.ports[0].execute(c.Credit("US-0-x", "cr-1", 5))).status == 201
    await b.ports[0].stop()
    await directory.close()


async def test_a_node_whose_lease_was_taken_stops_the_shard(tmp_path: Path) -> None:
    directory = SqliteDirectory(tmp_path / "directory.db")
    await directory.open()
    await directory.add_shard(ShardRecord(0, "US", str(tmp_path / "shard-0.db"), "a", "b"))
    a, b = keeper("a", directory, tmp_path / "shard-0.db"), keeper("b", directory, tmp_path / "shard-0.db")
    await a.first_pass()
    await a.ports[0].start()
    engine = a.ports[0].engine
    assert engine is not None
    # a's lease runs out (as if it had been paused): b, the standby, takes the shard over.
    taken = await directory.acquire(0, "b", now_ms=2**62, lease_ms=0)
    assert taken is not None and taken.epoch == 2
    await directory.release(taken)
    await b.step()
    await settle(b)
    assert b.owned[0].epoch == 3
    # a, resumed: its commit is fenced, and its next step drops the shard.
    reply = await engine.execute(c.CreateAccount("US-0-y", None, "partner", "US", "USD", "y", 0, b"{}"))
    assert reply.status == 503 and engine.state == FENCED
    await a.step()
    assert not a.owned and a.ports[0].engine is None
    await b.ports[0].stop()
    await asyncio.sleep(0)
    await directory.close()
