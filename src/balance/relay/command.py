"""`balance-service relay`: the relays of this node's shards, one per shard and broker.

`balance-service run` starts it as a child process when a broker is configured (``spawn``):
the relay's CPU then comes from the other core, not from the service's one thread (the money
path's), and it runs at a lower priority. It stops when its parent does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

from balance.config import Settings
from balance.metrics import Metrics
from balance.relay.config import RelayConfig
from balance.relay.page import EventSource
from balance.relay.relay import ShardRelay
from balance.relay.sink import Sink
from balance.relay.sources import MariaDbEventSource, SqliteEventSource

log = logging.getLogger("balance.relay")

PARENT_PID_ENV = "BALANCE_RELAY_PARENT_PID"
STOP_TIMEOUT_S = 5.0  # the relay yields the CPU to the service and the database under load


def source_for(settings: Settings, shard: int, *, read_only: bool = False, inline: bool = False) -> EventSource:
    """``inline``: SQLite read in the loop's thread (the relay's own process: ``serve``)."""
    if settings.db_url is None:
        return SqliteEventSource(settings.data_dir / f"shard-{shard}.db", read_only=read_only, inline=inline)
    return MariaDbEventSource.from_url(settings.db_url, shard)


def sinks_for(config: RelayConfig) -> list[Sink]:
    sinks: list[Sink] = []
    if config.amqp_url:
        from balance.relay.amqp import AmqpSink

        sinks.append(AmqpSink(config.amqp_url, config.amqp_exchange))
    if config.nats_url:
        from balance.relay.nats import NatsSink

        sinks.append(NatsSink(config.nats_url, config.nats_stream, config.nats_subject_prefix))
    return sinks


def shard_relays(shard: int, source: EventSource, config: RelayConfig, metrics: Metrics) -> list[ShardRelay]:
    """One shard's relays, one per broker (each its own connection and cursor), over one source:
    an outbox row is pruned only once all of them published it (``ShardRelay.peers``)."""
    peers = [
        ShardRelay(shard, source, sink, metrics, retention_s=config.retention_s, idle_poll_s=config.poll_s)
        for sink in sinks_for(config)
    ]
    for relay in peers:
        relay.peers = peers
    return peers


def build_relays(
    settings: Settings, config: RelayConfig, metrics: Metrics, *, inline_reads: bool = False
) -> list[ShardRelay]:
    """A relay per shard and sink (each its own broker connection and cursor): of every shard,
    or of ``config.shards`` (the others' relays run in other processes: their shards'
    databases are read for the cursors a moved subtree's events wait for)."""
    wanted = range(settings.shards) if config.shards is None else config.shards
    if any(shard >= settings.shards for shard in wanted):
        raise ValueError(f"BALANCE_RELAY_SHARDS names a shard past BALANCE_SHARDS ({settings.shards})")
    elsewhere = {
        shard: source_for(settings, shard, read_only=True) for shard in range(settings.shards) if shard not in wanted
    }
    relays: list[ShardRelay] = []
    for shard in wanted:
        relays += shard_relays(shard, source_for(settings, shard, inline=inline_reads), config, metrics)
    for relay in relays:  # a moved subtree's events wait for its old shard's (``ShardRelay._held_at``)
        relay.others = {
            other.shard: other for other in relays if other.sink.name == relay.sink.name and other is not relay
        }
        relay.barrier_sources = elsewhere
    return relays


async def run_relays(relays: list[ShardRelay], stopping: asyncio.Event) -> None:
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        await stopping.wait()
    finally:
        await stop_relays(relays, tasks)


async def stop_relays(relays: list[ShardRelay], tasks: list[asyncio.Task[None]]) -> None:
    await halt_relays(relays, tasks)
    sources = {id(relay.source): relay.source for relay in relays}
    sources.update({id(s): s for relay in relays for s in relay.barrier_sources.values()})
    for source in sources.values():
        await source.close()


async def halt_relays(relays: list[ShardRelay], tasks: list[asyncio.Task[None]], *, save: bool = True) -> None:
    """The relays stopped, their cursors saved (unless ``save`` is false: a fleet node that lost
    the shard leaves the cursor to its new owner) and their broker connections closed; their
    sources stay open."""
    for relay in relays:
        relay.stopping = True
    for task in tasks:
        task.cancel()
    _, late = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S) if tasks else (set(), set())
    if late:
        log.warning("events: %d relay(s) did not stop within %.0fs", len(late), STOP_TIMEOUT_S)
    for relay in relays:
        try:
            if save and relay.cursor != relay.saved:
                await relay.save()
        except Exception as exc:  # noqa: BLE001 (the next start publishes again from the last saved cursor)
            log.warning("events shard %s -> %s: cursor not saved at stop: %s", relay.shard, relay.sink.name, exc)
        await relay.sink.close()


async def _watch_parent(parent: int, stopping: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    log.warning("events: the service (pid %d) is gone; the relay stops", parent)
    stopping.set()


async def serve(settings: Settings, config: RelayConfig) -> None:
    metrics = Metrics()
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=settings.host, registry=metrics.registry)
    # Its own process: the shard files are read in the loop's thread (nothing else waits on it).
    relays = build_relays(settings, config, metrics, inline_reads=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    parent = os.environ.get(PARENT_PID_ENV)
    watcher = None if not parent else asyncio.create_task(_watch_parent(int(parent), stopping))
    shards = sorted({relay.shard for relay in relays})
    log.info("events: relaying shard(s) %s to %s", shards, ", ".join(sorted({r.sink.name for r in relays})))
    await run_relays(relays, stopping)
    if watcher is not None:
        watcher.cancel()


def main() -> int:
    try:
        settings, config = Settings.from_env(), RelayConfig.from_env()
    except ValueError as exc:
        print(f"balance-service relay: {exc}", file=sys.stderr, flush=True)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (config.amqp_url or config.nats_url):
        print("balance-service relay: set BALANCE_AMQP_URL and/or BALANCE_NATS_URL", file=sys.stderr, flush=True)
        return 1
    import uvloop

    uvloop.run(serve(settings, config))
    return 0


def spawn() -> subprocess.Popen[bytes]:
    """The relay as a child of this process (same environment), at a lower priority."""
    env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
    niceness = RelayConfig.from_env().nice
    return subprocess.Popen(
        [sys.executable, "-m", "balance", "relay"],
        env=env,
        preexec_fn=lambda: os.nice(niceness),  # noqa: PLW1509
    )
