"""The composition root: the one place that wires storage, engines, service and API."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from balance.api.app import BalanceApp
from balance.config import Settings
from balance.engine.clock import Clock, system_clock
from balance.engine.recovery import Backoff
from balance.engine.runtime import tune_runtime
from balance.engine.shard import ShardEngine
from balance.keys import admin_key_hash
from balance.metrics import Metrics
from balance.relay.feed import EventsFeed
from balance.service import BalanceService
from balance.storage.base import ShardStorage
from balance.storage.mariadb_url import is_mariadb_url

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
        return BalanceService(engines, settings.admin_key)
    admin_hash, _ = admin_key_hash(settings.admin_key, True, settings.data_dir)  # kept across restarts
    return BalanceService(engines, settings.admin_key, admin_key_hash=admin_hash)


def events_feed(service: BalanceService) -> EventsFeed:
    """GET /v1/events: a reader of each shard's database, beside its writer."""
    from balance.relay.config import RelayConfig
    from balance.relay.sources import source_of

    return EventsFeed([source_of(engine.storage) for engine in service.engines], RelayConfig.from_env().sink_names)


def build_app(settings: Settings) -> BalanceApp:
    """The app over a new service; one metrics registry, injected into both."""
    metrics = Metrics()
    service = build_service(settings, metrics=metrics)
    return BalanceApp(service, metrics, events=events_feed(service))
