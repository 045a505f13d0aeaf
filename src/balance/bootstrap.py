"""The composition root: the one place that wires storage, engines, service and API."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from balance.api.app import BalanceApp
from balance.config import Settings
from balance.engine.clock import Clock, system_clock
from balance.engine.recovery import Backoff
from balance.engine.runtime import tune_runtime
from balance.engine.shard import ShardEngine
from balance.keys import KeyRecord, admin_key_hash
from balance.metrics import Metrics
from balance.relay.feed import EventsFeed
from balance.service import BalanceService
from balance.storage.base import ShardStorage
from balance.storage.mariadb_url import is_mariadb_url

if TYPE_CHECKING:
    from balance.node.keeper import ShardKeeper

log = logging.getLogger("balance")


def shard_storage(settings: Settings, shard: int) -> ShardStorage:
    """SQLite file per shard by default; one MariaDB database per shard with BALANCE_DB_URL."""
    if settings.db_url is None:
        from balance.storage.sqlite import SqliteShardStorage

        return SqliteShardStorage(settings.data_dir / f"shard-{shard}.db")
    if is_mariadb_url(settings.db_url):
        from balance.storage.mariadb import from_url

        return from_url(settings.db_url, shard)
    raise ValueError(f"unsupported BALANCE_DB_URL scheme: {settings.db_url.split(':', 1)[0]}")


def stop_process(exc: BaseException) -> None:
    """A broken invariant: stop at once rather than move money on a wrong state."""
    log.critical("invariant broken, stopping the process: %s", exc)
    logging.shutdown()
    os._exit(70)


def build_service(
    settings: Settings,
    *,
    clock: Clock = system_clock,
    on_fatal: Callable[[BaseException], None] = stop_process,
    metrics: Metrics | None = None,
    backoff: Backoff | None = None,
) -> BalanceService:
    """The shards and the service over them. ``metrics`` is the registry the engines update (pass
    the one the app serves); ``backoff`` paces the retries while storage is away (tests pass one
    with a fake sleep)."""
    tune_runtime()
    metrics = metrics or Metrics()
    engines = [
        ShardEngine(
            shard,
            shard_storage(settings, shard),
            clock=clock,
            metrics=metrics,
            on_fatal=on_fatal,
            checkpoint_interval_s=settings.checkpoint_interval_s,
            backoff=backoff,
        )  # fmt: skip
        for shard in range(settings.shards)
    ]
    if not settings.admin_key_generated:
        service = BalanceService(engines, settings.admin_key)
    else:
        admin_hash, _ = admin_key_hash(settings.admin_key, True, settings.data_dir)  # kept across restarts
        service = BalanceService(engines, settings.admin_key, admin_key_hash=admin_hash)
    service.moves_dir = settings.data_dir / "moves"  # unfinished partner moves (docs/moves.md)
    return service


def events_feed(service: BalanceService) -> EventsFeed:
    """GET /v1/events: a reader of each shard's database, beside its writer."""
    from balance.relay.config import RelayConfig
    from balance.relay.sources import source_of

    config = RelayConfig.from_env()
    return EventsFeed(
        [source_of(engine.storage) for engine in service.engines], config.sink_names, retention_s=config.retention_s
    )


def build_app(settings: Settings) -> BalanceApp:
    """The app over a new service; one metrics registry, injected into both."""
    metrics = Metrics()
    service = build_service(settings, metrics=metrics)
    return BalanceApp(service, metrics, events=events_feed(service))


def storage_of_database(database_url: str) -> ShardStorage:
    """A shard's storage from the database the directory records for it: a mysql:// URL
    (the database named in it) or a SQLite file path."""
    if is_mariadb_url(database_url):
        from balance.storage.mariadb import MariaDbShardStorage
        from balance.storage.mariadb_url import parse_server

        server = parse_server(database_url)
        return MariaDbShardStorage(server.host, server.port, server.user, server.password, server.database)
    from balance.storage.sqlite import SqliteShardStorage

    return SqliteShardStorage(database_url)


async def build_node_app(settings: Settings) -> tuple[BalanceApp, ShardKeeper]:
    """A node of a fleet (``BALANCE_NODE_ID``): a port per shard of the directory, engines for
    the shards whose leases it holds (each over its storage fenced with the lease's epoch),
    and the keeper that renews them and takes shards over (started by the caller)."""
    from balance.directory.operator import open_directory
    from balance.directory.records import NodeRecord, ShardRecord
    from balance.node.keeper import ShardKeeper
    from balance.node.ports import NodeShard

    assert settings.node_id is not None
    tune_runtime()
    metrics = Metrics()
    directory = open_directory(settings.directory_url, settings.data_dir)
    await directory.open()
    shards = await directory.shards()
    if [s.id for s in shards] != list(range(len(shards))) or not shards:
        raise ValueError(f"the directory must list shards 0..n-1 (it lists {[s.id for s in shards]})")
    backoff = Backoff()
    ports = [NodeShard(s.id, system_clock, backoff) for s in shards]
    admin_hash = None
    if settings.admin_key_generated:
        admin_hash, _ = admin_key_hash(settings.admin_key, True, settings.data_dir)
    service = BalanceService([], settings.admin_key, admin_key_hash=admin_hash, ports=ports)

    def make_engine(shard: ShardRecord, epoch: int) -> ShardEngine:
        storage = storage_of_database(shard.database_url)
        storage.fence_with(epoch)
        engine = ShardEngine(
            shard.id,
            storage,
            metrics=metrics,
            on_fatal=stop_process,
            checkpoint_interval_s=settings.checkpoint_interval_s,
        )
        service.engines.append(engine)  # (tests and tools look inside; /readyz asks the ports)
        return engine

    node = NodeRecord(
        settings.node_id, settings.node_url or f"http://{settings.host}:{settings.port}", settings.region, 0
    )
    from balance.node.forwarding import Forwarder

    forwarder = None if settings.fleet_secret is None else Forwarder(settings.fleet_secret)
    keeper = ShardKeeper(
        node, directory, ports, make_engine, lease_s=settings.lease_s, on_taken_over=service.shard_taken_over,
        forwarder=forwarder, on_key=lambda row: service.keys.add(KeyRecord.from_row(row)),
        placement=service.placement,
    )  # fmt: skip
    service.node = keeper
    service.moves_dir = settings.data_dir / f"moves-{settings.node_id}"  # its partner moves (docs/moves.md)
    for port in ports:  # a transfer's target leg on another node's shard goes there
        port.remote = keeper.remote_execute
    keeper.finish_pending = service.finish_pending_transfers
    keeper.holds_naming = service.holds_naming  # which of its holds name another node's accounts
    await keeper.first_pass()
    return BalanceApp(service, metrics), keeper
