"""`balance-service run`: the API on the built-in HTTP/1.1 server (or uvicorn), engines in process.

Start: listen at once (``/healthz`` answers, ``/readyz`` and the API say 503 while the shards
recover); an address that cannot be bound is ``StartError`` (the command line prints one
line and exits 1). Stop (SIGTERM, SIGINT): stop reading requests, answer those in flight, then
stop the engines (which write a last checkpoint), and log one line saying so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from balance.config import Settings
from balance.metrics import Metrics

if TYPE_CHECKING:
    from balance.api.app import BalanceApp
    from balance.expiry.config import ExpiryConfig
    from balance.node.keeper import ShardKeeper
    from balance.relay.config import RelayConfig
    from balance.results.config import ResultsConfig
    from balance.results.runner import ResultsConsumers

log = logging.getLogger("balance.server")
RELAY_CHECK_S = 1.0  # how often `run` looks whether its relay process still runs


class StartError(Exception):
    """The server could not start (e.g. its port is in use): one line for the operator."""


def run(settings: Settings) -> None:
    if settings.http_server == "uvicorn" and settings.node_id is None:
        _run_uvicorn(settings)
        return
    import uvloop

    uvloop.run(serve(settings))


def _run_uvicorn(settings: Settings) -> None:
    import uvicorn

    from balance.bootstrap import build_app

    uvicorn.run(
        WithConsumers(build_app(settings), settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_level="warning", backlog=4096,
    )  # fmt: skip


async def serve(settings: Settings) -> None:
    from balance.api.admission import HttpLimits, raise_file_limit
    from balance.api.http1 import HttpServer
    from balance.bootstrap import build_app
    from balance.expiry.config import ExpiryConfig
    from balance.relay.config import RelayConfig
    from balance.results.config import ResultsConfig

    try:
        limits = HttpLimits.from_env()
        expiry = ExpiryConfig.from_env()
        results_config = ResultsConfig.from_env()
        relay_config = RelayConfig.from_env()
    except ValueError as exc:
        raise StartError(str(exc)) from None
    raise_file_limit()
    from balance.directory.records import DirectoryError

    keeper = None
    if settings.node_id is None:
        app = build_app(settings)
    else:  # a node of a fleet: the shards whose leases it holds (docs/fleet.md)
        from balance.bootstrap import build_node_app

        try:
            app, keeper = await build_node_app(settings)
        except (DirectoryError, ValueError) as exc:
            raise StartError(f"node {settings.node_id}: {exc}") from None
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals: list[str] = []

    def on_signal(name: str) -> None:
        signals.append(name)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    refusals = app.metrics.http_refusals
    http = HttpServer(app.serve, admission=app.admission(limits), refusals=lambda reason: refusals.labels(reason).inc())
    try:
        await http.listen(settings.host, settings.port)
    except OSError as exc:
        await app.service.stop()
        if keeper is not None:
            await keeper.release()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartError(f"cannot listen on {settings.host}:{settings.port}: {reason.lower()}") from None
    starting = loop.create_task(app.start_service())  # recovery in the background
    leases = None if keeper is None else loop.create_task(keeper.run())
    if keeper is None:
        stop_events = _start_relay(settings, app.metrics)
    else:
        try:
            stop_events = await _start_node_relay(keeper, relay_config, app.metrics)
        except DirectoryError as exc:
            await app.service.stop()
            await keeper.release()
            raise StartError(f"node {settings.node_id}: {exc}") from None
    stop_expiry = _start_expiry(settings, expiry, app) if keeper is None else _start_node_expiry(keeper, expiry, app)
    results = _start_results(app, starting, results_config, keeper)
    stop_pruner = _nothing if keeper is None else _start_node_pruner(keeper, relay_config)
    try:
        await stopping.wait()
    finally:
        began = time.monotonic()
        await http.stop()
        if results is not None:  # before the engines: what was not acknowledged is redelivered
            await results.stop()
        await stop_expiry()
        await stop_pruner()
        if not starting.done():
            starting.cancel()
        if leases is not None:
            leases.cancel()
        await app.service.stop()
        await app.close()
        if keeper is not None:
            await keeper.release()
        await stop_events()
        cause = signals[0] if signals else "shutdown"
        log.info("stopped on %s in %.2fs: answers in flight sent, shards checkpointed", cause, time.monotonic() - began)


def _start_results(
    app: BalanceApp, starting: asyncio.Future[None], config: ResultsConfig, keeper: ShardKeeper | None = None
) -> ResultsConsumers | None:
    """The payment results consumers (``balance.results``), when a broker is set and
    ``BALANCE_RESULTS`` is not off: they begin once the service has started. On a fleet node a
    result for a shard another node owns is applied by that node (forwarded, the verdict back),
    and this node applies what the other nodes' consumers forward to it."""
    from balance.results.runner import ResultsConsumers

    if not config.enabled:
        return None
    to_owner = None if keeper is None else keeper.payment_result_to_owner
    consumers = ResultsConsumers(config, app.service, app.metrics, to_owner)
    if keeper is not None:
        keeper.on_payment_result = consumers.applier.apply_forwarded
    consumers.start(after=starting)
    return consumers


def _start_relay(settings: Settings, metrics: Metrics) -> Callable[[], Awaitable[None]]:
    """The event relay beside the server (``balance.relay``): a child process (the default),
    tasks of this loop (``BALANCE_RELAY=inline``), or none (no broker, or ``off``). Returns
    what stops it (after the engines: it publishes what they committed last)."""
    from balance.relay.config import RelayConfig

    config = RelayConfig.from_env()
    if not config.enabled:
        return _nothing
    if config.mode == "process":
        from balance.relay.command import spawn

        children = [spawn()]

        async def supervise() -> None:
            """A relay process that exits (a bug, killed) is started again: it resumes at its cursor."""
            while True:
                await asyncio.sleep(RELAY_CHECK_S)
                code = children[-1].poll()
                if code is not None:
                    log.error("the event relay exited (%s); starting it again", code)
                    children.append(spawn())

        supervisor = asyncio.get_running_loop().create_task(supervise())

        async def stop_child() -> None:
            supervisor.cancel()
            child = children[-1]
            child.terminate()  # it saves its cursor and exits
            for _ in range(100):
                if child.poll() is not None:
                    return
                await asyncio.sleep(0.05)
            child.kill()

        return stop_child
    from balance.relay.command import build_relays, run_relays

    stopping = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run_relays(build_relays(settings, config, metrics), stopping))

    async def stop_tasks() -> None:
        stopping.set()
        await task

    return stop_tasks


async def _start_node_relay(
    keeper: ShardKeeper, config: RelayConfig, metrics: Metrics
) -> Callable[[], Awaitable[None]]:
    """A fleet node with a broker: the relays of the shards it owns, as tasks of this process
    started and stopped with its leases (``balance.relay.node_relay``); ``BALANCE_RELAY=off``:
    none. Not a child process: the leases are known here, and a shard lost stops its relays at
    once (a child would have to learn them, and would outlive a lost lease by that much)."""
    if not config.enabled:
        return _nothing
    from balance.relay.node_relay import NodeRelay

    relay = NodeRelay(keeper.ports, await keeper.directory.shards(), config, metrics)
    task = asyncio.get_running_loop().create_task(relay.run())

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await relay.stop()

    return stop


def _start_expiry(settings: Settings, config: ExpiryConfig, app: BalanceApp) -> Callable[[], Awaitable[None]]:
    """Job mode (a broker configured, ``BALANCE_EXPIRY_JOB`` not off): consume the expiry job's
    notices, the engines' sweeps become the fallback (``balance.expiry.consumer``)."""
    from balance.expiry.consumer import start_consumers

    return start_consumers(app.service.engines, config, settings.region)


def _start_node_expiry(keeper: ShardKeeper, config: ExpiryConfig, app: BalanceApp) -> Callable[[], Awaitable[None]]:
    """A fleet node in job mode: the consumers (and the job, as a task) of the shards it owns
    (``balance.expiry.node``); without a broker the engines' sweeps alone, as before."""
    if not config.notices:
        return _nothing
    from balance.expiry.node import NodeExpiry

    expiry = NodeExpiry(keeper.ports, config, keeper.node.region, app.metrics)
    task = asyncio.get_running_loop().create_task(expiry.run())

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await expiry.stop()

    return stop


def _start_node_pruner(keeper: ShardKeeper, config: RelayConfig) -> Callable[[], Awaitable[None]]:
    """A fleet node without a broker: the outbox of each shard it owns pruned past the retention
    (``balance.relay.node_pruner``, the single-process pruner per shard). With a broker the
    relay prunes what every broker confirmed, so nothing here."""
    if config.sink_names:
        return _nothing
    from balance.relay.node_pruner import NodePruner

    pruner = NodePruner(keeper.ports, config.retention_s)
    task = asyncio.get_running_loop().create_task(pruner.run())

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pruner.stop()

    return stop


class WithConsumers:
    """The app under an ASGI server (uvicorn, ``balance.asgi``) with what ``serve`` runs beside
    it: the event relay, the expiry consumers (and job), the payment results consumers. Its
    lifespan starts them with the service and stops them as ``serve`` does (the results first,
    the engines, the relay last). Requests go to the app as they are."""

    def __init__(self, app: BalanceApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.service = app.service  # (tests and tools look inside, as they do on the app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        from balance.expiry.config import ExpiryConfig
        from balance.results.config import ResultsConfig

        stops: list[Callable[[], Awaitable[None]]] = []
        starting: asyncio.Task[None] | None = None
        results: ResultsConsumers | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    expiry, results_config = ExpiryConfig.from_env(), ResultsConfig.from_env()
                except ValueError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                starting = asyncio.create_task(self.app.start_service())  # recovery in the background
                stops.append(_start_relay(self.settings, self.app.metrics))
                stops.append(_start_expiry(self.settings, expiry, self.app))
                results = _start_results(self.app, starting, results_config)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if results is not None:
                    await results.stop()
                await stops[1]()
                if starting is not None and not starting.done():
                    starting.cancel()
                await self.app.service.stop()
                await self.app.close()
                await stops[0]()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _nothing() -> None:
    return None
