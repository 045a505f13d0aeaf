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
from balance.relay.feed import EventsFeed
from balance.relay.sources import source_of

log = logging.getLogger("balance.relay")

CHECK_S = 1.0  # how often the node looks which shards it owns and has recovered


@dataclass(slots=True)
class _Running:
    engine: ShardEngine
    feed: EventsFeed
    task: asyncio.Task[None]


class NodePruner:
    """The pruners of the shards a node owns (``ports``: the node's ``NodeShard`` ports)."""

    def __init__(self, ports: Sequence[Any], retention_s: float) -> None:
        self.ports, self.retention_s = ports, retention_s
        self.running: dict[int, _Running] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Until cancelled (``stop``)."""
        while True:
            self.refresh()
            await asyncio.sleep(CHECK_S)

    def refresh(self) -> None:
        for port in self.ports:
            shard, engine = int(port.shard), port.engine
            current = self.running.get(shard)
            if current is not None and current.engine is not engine:  # lost (or taken over again)
                self._stop_shard(self.running.pop(shard))
                current = None
            if current is None and engine is not None and engine.ready:
                self.running[shard] = self._start_shard(shard, engine)

    def _start_shard(self, shard: int, engine: ShardEngine) -> _Running:
        feed = EventsFeed([source_of(engine.storage)], retention_s=self.retention_s)
        task = asyncio.get_running_loop().create_task(feed.run_pruner())
        log.info("events: shard %d: pruning its outbox past %gs (no broker)", shard, self.retention_s)
        return _Running(engine, feed, task)

    def _stop_shard(self, running: _Running) -> None:
        running.task.cancel()
        closing = asyncio.get_running_loop().create_task(self._close(running))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(running: _Running) -> None:
        await asyncio.gather(running.task, return_exceptions=True)
        await running.feed.close()

    async def stop(self) -> None:
        for running in self.running.values():
            self._stop_shard(running)
        self.running.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
