"""Outbox pruning on a fleet node without a broker (``docs/fleet.md``, ``docs/events.md``).

A node serves no event feed, so nothing else deletes its shards' account facts past
``BALANCE_EVENTS_RETENTION_S``. For each shard it owns and has recovered, the node runs the
single-process service's pruner (``EventsFeed.run_pruner``: a pass at once, then every 60 s,
slices on a connection of its own, never on the writer's commit path) over that shard's
database alone. A shard lost (its engine replaced or gone) loses its pruner; the new owner
starts its own. With a broker the relay prunes instead (only what every broker confirmed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from balance.engine.shard import ShardEngine
from balance.node.owned_shards import OwnedShardWork
from balance.relay.feed import EventsFeed
from balance.relay.sources import source_of

log = logging.getLogger("balance.relay")


@dataclass(slots=True)
class _Running:
    engine: ShardEngine
    feed: EventsFeed
    task: asyncio.Task[None]


class NodePruner(OwnedShardWork[_Running]):
    """The pruners of the shards a node owns (``ports``: the node's ``NodeShard`` ports)."""

    def __init__(self, ports: Sequence[Any], retention_s: float) -> None:
        super().__init__(ports)
        self.retention_s = retention_s

    def start(self, shard: int, engine: ShardEngine) -> _Running:
        feed = EventsFeed([source_of(engine.storage)], retention_s=self.retention_s)
        task = asyncio.get_running_loop().create_task(feed.run_pruner())
        log.info("events: shard %d: pruning its outbox past %gs (no broker)", shard, self.retention_s)
        return _Running(engine, feed, task)

    def forget(self, shard: int, running: _Running) -> None:
        running.task.cancel()

    async def close(self, running: _Running, save: bool) -> None:
        await asyncio.gather(running.task, return_exceptions=True)
        await running.feed.close()
