"""The expiry of a fleet node's shards (``docs/fleet.md``): for each shard it owns and has
recovered, the ``hold.expiry-due`` consumers (one per broker) and, unless the job runs
elsewhere (``BALANCE_EXPIRY_JOB=external``), the shard's expiry job as a task of the node (it
reads the shard's committed state and publishes; it writes nothing). A shard the node takes
over gets them once it is ready; a shard it loses (its engine replaced or gone) loses them: its
new owner's consumers take the notices from then on (per-shard queues and subjects)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from balance.engine.shard import ShardEngine
from balance.expiry.brokers import NoticeBroker, brokers
from balance.expiry.config import ExpiryConfig
from balance.expiry.consumer import consume
from balance.expiry.job import ShardExpiryJob
from balance.expiry.reader import MariaDbReader, Reader, SqliteReader
from balance.metrics import Metrics
from balance.node.owned_shards import OwnedShardWork

log = logging.getLogger("balance.expiry")


@dataclass(slots=True)
class _Running:
    engine: ShardEngine
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    brokers: list[NoticeBroker] = field(default_factory=list)
    reader: Reader | None = None


def reader_of(storage: Any, config: ExpiryConfig) -> Reader:
    """The job's reader of the database an engine writes: the SQLite file read-only, or the
    MariaDB database as ``BALANCE_EXPIRY_DB_URL``'s (SELECT-only) user when it is set."""
    from balance.storage.sqlite import SqliteShardStorage

    inner = getattr(storage, "inner", None)
    if inner is not None:
        return reader_of(inner, config)
    if isinstance(storage, SqliteShardStorage):
        return SqliteReader(storage.path)
    from balance.storage.mariadb import MariaDbShardStorage

    if not isinstance(storage, MariaDbShardStorage):
        raise TypeError(f"no expiry reader for {type(storage).__name__}")
    if config.db_url is None:
        return MariaDbReader(storage.host, storage.port, storage.user, storage.password, storage.database)
    from balance.storage.mariadb_url import parse_server

    user = parse_server(config.db_url)
    return MariaDbReader(storage.host, storage.port, user.user, user.password, storage.database)


class NodeExpiry(OwnedShardWork[_Running]):
    def __init__(self, ports: Sequence[Any], config: ExpiryConfig, region: str, metrics: Metrics) -> None:
        super().__init__(ports)
        self.config, self.region, self.metrics = config, region, metrics
        self.with_job = config.mode != "external"

    def start(self, shard: int, engine: ShardEngine) -> _Running:
        loop = asyncio.get_running_loop()
        running = _Running(engine)
        engine.expiry_fallback_s = self.config.fallback_s  # the sweep becomes the fallback
        consumers = brokers(self.config, self.region)
        running.brokers += consumers
        running.tasks += [loop.create_task(consume(engine, broker)) for broker in consumers]
        if self.with_job:
            running.reader = reader_of(engine.storage, self.config)
            sinks = brokers(self.config, self.region)
            running.brokers += sinks
            job = ShardExpiryJob(shard, self.region, running.reader, sinks, self.metrics, self.config)
            running.tasks.append(loop.create_task(job.run()))
        log.info("expiry: shard %d: consuming its notices%s", shard, " and running its job" if self.with_job else "")
        return running

    def forget(self, shard: int, running: _Running) -> None:
        for task in running.tasks:
            task.cancel()

    async def close(self, running: _Running, save: bool) -> None:
        await asyncio.gather(*running.tasks, return_exceptions=True)
        for broker in running.brokers:
            await broker.close()
        if running.reader is not None:
            await running.reader.close()
