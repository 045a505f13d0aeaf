"""``hold.expiry-due`` notices on the brokers: published by the job, consumed by the engine.

RabbitMQ: a durable queue per shard (``balance.expiry-due.<shard>``, declared by both sides),
persistent messages through the default exchange, publisher confirms; ``message_id`` = the
notice id. NATS JetStream: stream ``BALANCE_EXPIRY_DUE`` (work queue: a message is gone once
acknowledged) on ``balance.expiry-due.<region>.<shard>``, ``Nats-Msg-Id`` = the notice id (the
server drops a re-publish within its duplicate window), a durable pull consumer per shard.
A handler returns once the expiry is committed (or found needless): only then is the message
acknowledged; ``Retry`` puts it back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from balance.expiry.config import ExpiryConfig
from balance.expiry.notices import NOTICE_TYPE

log = logging.getLogger("balance.expiry")

TIMEOUT_S = 30.0
Handler = Callable[[bytes], Awaitable[None]]


class NoticeError(Exception):
    """The broker is away or refused: what the call published is unknown (publish again)."""


class Retry(Exception):
    """The notice cannot be handled now (the shard is not serving): deliver it again later."""


class NoticeBroker(Protocol):
    name: str

    async def publish(self, shard: int, messages: list[tuple[str, bytes]]) -> None:
        """Every (id, body), each confirmed by the broker; or raise NoticeError."""

    async def consume(self, shard: int, handler: Handler, prefetch: int) -> None:
        """Hand each notice of ``shard`` to ``handler``, acknowledging it after; runs until
        cancelled or the connection fails (raises NoticeError)."""

    async def close(self) -> None: ...


class AmqpNotices:
    name = "amqp"

    def __init__(self, url: str, config: ExpiryConfig) -> None:
        self.url, self.config = url, config
        self._connection: Any = None
        self._channel: Any = None
        self._declared: set[int] = set()

    async def _open(self, confirms: bool) -> Any:
        import aio_pika

        if self._channel is None or self._channel.is_closed:
            await self.close()
            self._connection = await aio_pika.connect(self.url, timeout=5)
            self._channel = await self._connection.channel(publisher_confirms=confirms)
        return self._channel

    async def _queue(self, channel: Any, shard: int) -> Any:
        queue = await channel.declare_queue(self.config.queue(shard), durable=True)
        self._declared.add(shard)
        return queue

    async def publish(self, shard: int, messages: list[tuple[str, bytes]]) -> None:
        import aio_pika

        try:
            channel = await self._open(confirms=True)
            if shard not in self._declared:
                await self._queue(channel, shard)
            routing_key = self.config.queue(shard)
            await asyncio.gather(*(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        body, message_id=message_id, type=NOTICE_TYPE, content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=routing_key, timeout=TIMEOUT_S,
                )
                for message_id, body in messages
            ))  # fmt: skip
        except Exception as exc:
            await self.close()
            raise NoticeError(f"rabbitmq: {exc!r}") from exc

    async def consume(self, shard: int, handler: Handler, prefetch: int) -> None:
        try:
            channel = await self._open(confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            queue = await self._queue(channel, shard)
            running: set[asyncio.Task[None]] = set()
            try:
                async with queue.iterator() as messages:
                    async for message in messages:
                        task = asyncio.create_task(_handle_amqp(message, handler))
                        running.add(task)
                        task.add_done_callback(running.discard)
            finally:  # not acknowledged: the broker delivers them again (the engine's side is idempotent)
                for task in running:
                    task.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.close()
            raise NoticeError(f"rabbitmq: {exc!r}") from exc
        raise NoticeError("rabbitmq: the consumer's queue was closed")

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        if connection is not None:
            try:
                await connection.close()
            except Exception as exc:  # noqa: BLE001 (closing what failed may fail too)
                log.debug("expiry: closing the RabbitMQ connection: %r", exc)


async def _handle_amqp(message: Any, handler: Handler) -> None:
    try:
        try:
            await handler(message.body)
        except Retry:
            await asyncio.sleep(0.5)
            await message.nack(requeue=True)
            return
        except Exception:
            log.exception("expiry: a notice could not be handled; delivered again later")
            await message.nack(requeue=True)
            return
        await message.ack()
    except Exception as exc:  # noqa: BLE001 (the channel closed: the broker delivers it again)
        log.debug("expiry: a notice not acknowledged: %r", exc)


class NatsNotices:
    name = "nats"

    def __init__(self, url: str, config: ExpiryConfig, region: str) -> None:
        self.url, self.config, self.region = url, config, region
        self._nc: Any = None
        self._js: Any = None

    async def _open(self) -> Any:
        import nats
        from nats.js.api import RetentionPolicy
        from nats.js.errors import NotFoundError

        if self._nc is not None and self._nc.is_connected:
            return self._js
        await self.close()
        self._nc = await nats.connect(
            self.url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=1, error_cb=_quiet,
        )  # fmt: skip
        self._js = self._nc.jetstream(timeout=TIMEOUT_S)
        try:
            await self._js.stream_info(self.config.nats_stream)
        except NotFoundError:
            await self._js.add_stream(
                name=self.config.nats_stream, subjects=[f"{self.config.subject_prefix}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
            )  # fmt: skip
        return self._js

    async def publish(self, shard: int, messages: list[tuple[str, bytes]]) -> None:
        try:
            js = await self._open()
            subject = self.config.subject(self.region, shard)
            acks = [
                await js.publish_async(subject, body, headers={"Nats-Msg-Id": message_id})
                for message_id, body in messages
            ]
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.gather(*acks)
        except Exception as exc:
            await self.close()
            raise NoticeError(f"nats: {exc!r}") from exc

    async def consume(self, shard: int, handler: Handler, prefetch: int) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            js = await self._open()
            subscription = await js.pull_subscribe(
                self.config.subject(self.region, shard), durable=f"balance-expiry-{shard}",
                stream=self.config.nats_stream,
            )  # fmt: skip
            while True:
                try:
                    batch = await subscription.fetch(prefetch, timeout=1.0)
                except (TimeoutError, NatsTimeout):
                    continue
                await asyncio.gather(*(_handle_nats(message, handler) for message in batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.close()
            raise NoticeError(f"nats: {exc!r}") from exc

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("expiry: closing the NATS connection: %r", exc)


async def _handle_nats(message: Any, handler: Handler) -> None:
    try:
        try:
            await handler(message.data)
        except Retry:
            await message.nak(delay=0.5)
            return
        except Exception:
            log.exception("expiry: a notice could not be handled; delivered again later")
            await message.nak(delay=1.0)
            return
        await message.ack()
    except Exception as exc:  # noqa: BLE001 (the connection closed: redelivered after its ack wait)
        log.debug("expiry: a notice not acknowledged: %r", exc)


async def _quiet(exc: Exception) -> None:
    log.debug("nats client: %r", exc)


def brokers(config: ExpiryConfig, region: str) -> list[NoticeBroker]:
    found: list[NoticeBroker] = []
    if config.amqp_url:
        found.append(AmqpNotices(config.amqp_url, config))
    if config.nats_url:
        found.append(NatsNotices(config.nats_url, config, region))
    return found
