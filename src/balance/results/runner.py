"""The payment results consumers of a service process: one per broker set, started with the
service (they submit to its engines) and stopped before its engines (what was not acknowledged
is redelivered and applied once)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from balance.metrics import Metrics
from balance.results.applier import ResultApplier, ToOwner
from balance.results.config import ResultsConfig

if TYPE_CHECKING:
    from balance.service import BalanceService

log = logging.getLogger("balance.results")


class Consumer(Protocol):
    broker: str
    connected: asyncio.Event

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class ResultsConsumers:
    def __init__(
        self, config: ResultsConfig, service: BalanceService, metrics: Metrics, to_owner: ToOwner | None = None
    ) -> None:
        applier = self.applier = ResultApplier(service, metrics, to_owner)
        self.consumers: list[Consumer] = []
        if config.amqp_url:
            from balance.results.amqp import AmqpResults

            self.consumers.append(AmqpResults(config, applier))
        if config.nats_url:
            from balance.results.nats import NatsResults

            self.consumers.append(NatsResults(config, applier))
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, after: asyncio.Future[None] | None = None) -> None:
        """Consume from every broker (``after``: once the service has started)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(consumer, after)) for consumer in self.consumers]

    @staticmethod
    async def _run(consumer: Consumer, after: asyncio.Future[None] | None) -> None:
        if after is not None:
            await asyncio.shield(after)
        await consumer.run()

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(consumer.connected.wait() for consumer in self.consumers))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in self.consumers:
            await consumer.stop()
