"""The event relays of a fleet node with a broker (``docs/fleet.md``, ``docs/events.md``).

For each shard the node owns and has recovered, the shard's relays (one per broker: the same
``ShardRelay`` as a single process, built by ``command.shard_relays``) over the database its
engine writes (``sources.source_of``), with their durable cursors in that database: a node
taking a shard over resumes from the cursor its former owner saved (at least once, in order
per shard). Tasks of the node's process, not a child: ownership is known here, and a shard
lost (its engine replaced, gone or fenced, looked at every ``CHECK_S``) stops its relays at
once, without saving their cursors (the new owner's relay owns them now; what was published
meanwhile is published again: consumers de-duplicate by id). A moved subtree's events wait for
its old shard's: through that shard's relay when it runs here (``ShardRelay.others``), else
through its durable cursor read from its database, as the directory names it
(``ShardRelay.barrier_sources``, read-only)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from balance.directory.records import ShardRecord
from balance.engine.shard import FENCED, ShardEngine
from balance.metrics import Metrics
from balance.node.owned_shards import OwnedShardWork
from balance.relay.command import halt_relays, shard_relays
from balance.relay.config import RelayConfig
from balance.relay.page import EventSource
from balance.relay.relay import ShardRelay
from balance.relay.sources import MariaDbEventSource, SqliteEventSource, source_of

log = logging.getLogger("balance.relay")


def cursor_reader(database_url: str) -> EventSource:
    """Another node's shard, as the directory names its database: read for its cursors only."""
    from balance.storage.mariadb_url import is_mariadb_url

    if is_mariadb_url(database_url):
        from balance.storage.mariadb_url import parse_server

        server = parse_server(database_url)
        return MariaDbEventSource(server.host, server.port, server.user, server.password, server.database)
    return SqliteEventSource(database_url, read_only=True)


@dataclass(slots=True)
class _Running:
    engine: ShardEngine
    source: EventSource
    relays: list[ShardRelay]
    tasks: list[asyncio.Task[None]]


class NodeRelay(OwnedShardWork[_Running]):
    """The relays of the shards a node owns (``ports``: the node's ``NodeShard`` ports;
    ``shards``: the directory's shards, whose databases are read for the cursors of the
    shards relayed elsewhere)."""

    check_s = 0.5

    def __init__(
        self, ports: Sequence[Any], shards: Sequence[ShardRecord], config: RelayConfig, metrics: Metrics
    ) -> None:
        super().__init__(ports)
        self.config, self.metrics = config, metrics
        # Every shard's database, read-only, for its durable cursors (a shard relayed here is read
        # through its relay instead, ``others``); connected on first use.
        self.cursor_readers: dict[int, EventSource] = {s.id: cursor_reader(s.database_url) for s in shards}
        # Per broker: the relays running here, by shard (shared by them: it follows the leases).
        self.here: dict[str, dict[int, ShardRelay]] = {name: {} for name in config.sink_names}

    def lost(self, shard: int, current: _Running, engine: ShardEngine | None) -> bool:
        if current.engine is not engine or current.engine.state == FENCED:
            log.info("events: shard %d is no longer this node's: its relays stop", shard)
            return True
        return False

    def ended(self, shard: int, current: _Running) -> bool:
        if not any(task.done() for task in current.tasks):
            return False
        ended = [t.exception() for t in current.tasks if t.done() and not t.cancelled()]  # a bug ended one
        log.error("events: shard %d: a relay ended (%r); starting them again", shard, ended)
        return True  # (started again at the next look: the stopped ones' cursors saved first)

    def start(self, shard: int, engine: ShardEngine) -> _Running:
        source = source_of(engine.storage)
        relays = shard_relays(shard, source, self.config, self.metrics)
        for relay in relays:
            relay.others = self.here[relay.sink.name]
            relay.others[shard] = relay
            relay.barrier_sources = {s: r for s, r in self.cursor_readers.items() if s != shard}
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(relay.run()) for relay in relays]
        log.info("events: shard %d: relaying to %s", shard, ", ".join(r.sink.name for r in relays))
        return _Running(engine, source, relays, tasks)

    def forget(self, shard: int, running: _Running) -> None:
        for relay in running.relays:
            if self.here[relay.sink.name].get(shard) is relay:
                del self.here[relay.sink.name][shard]  # its old shard's cursor is read from its database now
            for gauge in (self.metrics.events_lag_seconds, self.metrics.events_published_seq):
                try:  # the new owner's /metrics shows them now (a lost shard's would stay as they were)
                    gauge.remove(str(shard), relay.sink.name)
                except KeyError:
                    pass

    async def close(self, running: _Running, save: bool) -> None:
        await halt_relays(running.relays, running.tasks, save=save)
        await running.source.close()

    async def stop(self) -> None:
        """A clean stop: the cursors saved (at least once: a newer owner's relay may be further)."""
        await super().stop()
        for reader in self.cursor_readers.values():
            await reader.close()
