"""RabbitMQ: the durable queue ``balance.payment-results`` (dead-letter exchange
``balance.dead-letters``), consumed with a bounded prefetch.

Each delivery is applied (``applier``) as its own task, so up to ``prefetch`` results share the
engines' group commits; it is acknowledged only after the outcome committed. What can never
apply is published to the dead-letter exchange (persistent, confirmed, the reason in the
``x-balance-reason`` header) and then acknowledged: it never blocks the queue. What the engine
could not take now is put back (``nack`` with requeue) after a backoff. The queue's own
``x-dead-letter-exchange`` catches what a client rejects without requeue (e.g. an operator's
``basic.reject``), into the same exchange.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from balance.results import message as m
from balance.results.applier import ResultApplier
from balance.results.backoff import RetryDelay
from balance.results.config import ResultsConfig

log = logging.getLogger("balance.results")

RECONNECT_S = 2.0


async def declare(channel: Any, config: ResultsConfig) -> tuple[Any, Any]:
    """The dead-letter exchange and its queue, then the results queue (all durable). Returns
    (the results queue, the dead-letter exchange)."""
    import aio_pika

    dead = await channel.declare_exchange(config.dead_letters, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(config.dead_letters, durable=True)
    await dead_queue.bind(dead)
    queue = await channel.declare_queue(
        config.queue, durable=True, arguments={"x-dead-letter-exchange": config.dead_letters}
    )
    return queue, dead


async def _closed(connection: Any) -> None:
    """Until ``connection`` closes (the broker went away, or ``stop``)."""
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(*_: object) -> None:
        if not closed.done():
            closed.set_result(None)

    connection.close_callbacks.add(on_close)
    await closed


class Acks:
    """The acknowledgements of one channel, coalesced: one ``basic.ack`` with ``multiple`` up to
    the highest delivery tag below which every delivery is settled (acknowledged, or put back),
    the others one by one; all that are ready in one turn of the loop go out together. (One frame
    and one socket write per acknowledgement cost as much as applying the result.)"""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.base = 0  # every delivery tag up to this one is settled (tags count from 1 per channel)
        self.settled: set[int] = set()  # settled tags above ``base``
        self.ready: list[int] = []  # acknowledgements not yet sent
        self._scheduled = False
        self._sending: asyncio.Future[None] | None = None

    def ack(self, tag: int) -> None:
        """Acknowledge ``tag`` (its outcome is committed) with the next batch."""
        self.ready.append(tag)
        self.settled.add(tag)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def nack(self, tag: int) -> None:
        """Put ``tag`` back on the queue (redelivered later)."""
        await self.channel.basic_nack(tag, requeue=True)
        self.settled.add(tag)

    def _flush(self) -> None:
        self._scheduled = False
        ready, self.ready = self.ready, []
        base = self.base
        while base + 1 in self.settled:
            base += 1
            self.settled.discard(base)
        self.base = base
        single = [tag for tag in ready if tag > base]
        # ``multiple`` names the highest tag acknowledged in THIS batch: every tag below it is
        # settled, and those still outstanding are this batch's. Naming ``base`` itself would
        # ack a tag already acknowledged alone or put back (nack) in an earlier batch, and the
        # broker closes the channel on an unknown delivery tag (PRECONDITION_FAILED).
        covered = [tag for tag in ready if tag <= base]
        multiple = max(covered) if covered else None
        self._sending = asyncio.ensure_future(self._send(self._sending, multiple, single))

    async def _send(self, before: asyncio.Future[None] | None, multiple: int | None, single: list[int]) -> None:
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)  # in order
        try:
            if multiple is not None:
                await self.channel.basic_ack(multiple, multiple=True, wait=False)
            for tag in single:
                await self.channel.basic_ack(tag, wait=False)
        except Exception as exc:  # noqa: BLE001 (the channel closed: the broker redelivers them, applied once)
            log.warning("payment results: acknowledgements not sent: %r", exc)


class AmqpResults:
    broker = "amqp"

    def __init__(self, config: ResultsConfig, applier: ResultApplier) -> None:
        assert config.amqp_url is not None
        self.config, self.applier = config, applier
        self.delay = RetryDelay()
        self._connection: Any = None
        self._dead: Any = None
        self._acks: Acks | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Connect (again after any failure, every ``RECONNECT_S``) and consume until cancelled."""
        import aio_pika

        while True:
            try:
                self._connection = await aio_pika.connect(self.config.amqp_url, timeout=5)
                channel = await self._connection.channel(publisher_confirms=True)
                await channel.set_qos(prefetch_count=self.config.prefetch)
                _, self._dead = await declare(channel, self.config)
                raw = await channel.get_underlay_channel()  # aiormq: lighter deliveries than aio-pika's
                self._acks = Acks(raw)
                await raw.basic_consume(self.config.queue, functools.partial(self._on_message, self._acks))
                log.info("payment results: consuming RabbitMQ queue %s", self.config.queue)
                self.connected.set()
                await _closed(self._connection)
                log.warning("payment results: the RabbitMQ connection closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (broker away: try again)
                log.warning("payment results: RabbitMQ %r; retrying in %.0fs", exc, RECONNECT_S)
            finally:
                self.connected.clear()
                await self._close()
            await asyncio.sleep(RECONNECT_S)

    async def _on_message(self, acks: Acks, message: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        tag = message.delivery.delivery_tag
        try:
            verdict, result = await self.applier.apply(message.body)
            if verdict.action == m.ACK:
                acks.ack(tag)
                self.delay.reset()
            elif verdict.action == m.DEAD_LETTER:
                await self._dead_letter(message, verdict, result)
                acks.ack(tag)
            else:
                await asyncio.sleep(self.delay.next())
                await acks.nack(tag)
            self.applier.settled(self.broker, verdict, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (the channel closed: the broker redelivers it)
            log.warning("payment results: a delivery was not settled, putting it back: %r", exc)
            try:  # else it would hold its prefetch slot (and the coalesced acknowledgements) until reconnect
                await asyncio.sleep(self.delay.next())
                await acks.nack(tag)
            except Exception as again:  # noqa: BLE001 (the channel is closed: redelivered anyway)
                log.debug("payment results: nack: %r", again)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _dead_letter(self, message: Any, verdict: m.Verdict, result: m.PaymentResult | None) -> None:
        import aio_pika

        properties = message.header.properties
        headers = dict(properties.headers or {})
        headers[m.REASON_HEADER] = verdict.outcome
        headers[m.DETAIL_HEADER] = verdict.detail[:1000]
        if result is not None:
            headers[m.MESSAGE_ID_HEADER] = result.id
        await self._dead.publish(
            aio_pika.Message(
                message.body,
                headers=headers,
                content_type=properties.content_type or "application/json",
                message_id=properties.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.config.queue,
        )  # fmt: skip  (confirmed: publisher confirms are on)

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("payment results: closing RabbitMQ: %r", exc)

    async def stop(self) -> None:
        """Stop taking deliveries; those not acknowledged are redelivered (applied once)."""
        for task in list(self._tasks):
            task.cancel()
        await self._close()
