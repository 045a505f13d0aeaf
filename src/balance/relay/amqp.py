"""RabbitMQ through aio-pika: a durable topic exchange, persistent messages, publisher confirms.

aio-pika (over aiormq) sends each message with its own write and several futures: ~120-340 µs
of CPU per message measured here, more than a whole operation costs the service. The
connection, the channel, the exchange and the confirms stay aio-pika's; a page of events goes
out as its AMQP frames in ONE write (``publish_frames``), each message with its delivery tag
registered on the channel, so the channel's confirm handling resolves them (~16 µs per message,
BENCHMARKS.md). The frames are checked against pamqp's (tests/unit/test_amqp_frames.py).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from balance.events import catalogue as cat
from balance.events.stream import Published
from balance.relay.sink import Confirmation, SinkError

log = logging.getLogger("balance.relay")

CONFIRM_TIMEOUT_S = 30.0
_FRAME_END = b"\xce"
_BASIC_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # class basic, method publish, reserved ticket
# Properties sent: content-type, delivery-mode (2: persistent), message-id, type (bit order).
_PROPERTY_FLAGS = (1 << 15) | (1 << 12) | (1 << 7) | (1 << 5)
_CONTENT_TYPE = b"\x10application/json"


def _shortstr(value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {value[:40]!r}")
    return bytes((len(value),)) + value


_FRAME_HEAD = struct.Struct(">BHI")
_HEADER = struct.Struct(">HHQH")


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(frame_type, channel, len(payload)) + payload + _FRAME_END


def method_frame(channel: int, exchange: str, routing_key: str) -> bytes:
    """basic.publish to ``exchange`` with ``routing_key`` (the same for every event of a type: cached)."""
    method = _BASIC_PUBLISH + _shortstr(exchange.encode()) + _shortstr(routing_key.encode()) + b"\x00"
    return _frame(1, channel, method)


def message_frames(
    channel: int, exchange: str, routing_key: str, message_id: str, event_type: str, body: bytes, frame_max: int,
    method: bytes | None = None,
) -> bytes:  # fmt: skip
    """basic.publish (``method``: its frame, if cached), the content header and the body frame(s):
    one persistent message."""
    message_id_bytes, type_bytes = message_id.encode(), event_type.encode()
    header = b"".join((
        _HEADER.pack(60, 0, len(body), _PROPERTY_FLAGS), _CONTENT_TYPE, b"\x02",
        _shortstr(message_id_bytes), _shortstr(type_bytes),
    ))  # fmt: skip
    parts = [method or method_frame(channel, exchange, routing_key), _frame(2, channel, header)]
    step = frame_max - 8 if frame_max > 8 else len(body) or 1
    if len(body) <= step:
        parts.append(_frame(3, channel, body))
    else:
        parts += [_frame(3, channel, body[start : start + step]) for start in range(0, len(body), step)]
    return b"".join(parts)


class AmqpSink:
    """One connection and confirm channel per relay process; reconnects on the next call after a failure."""

    name = "amqp"

    def __init__(self, url: str, exchange: str = cat.AMQP_EXCHANGE) -> None:
        self.url, self.exchange_name = url, exchange
        self._connection: Any = None
        self._channel: Any = None
        self._lock = asyncio.Lock()  # one page on the channel at a time (delivery tags in order)
        self._methods: dict[tuple[int, str, int, str], bytes] = {}  # (channel, region, shard, type) -> frame

    async def _connect(self) -> Any:
        import aio_pika

        if self._channel is not None and not self._channel.is_closed:
            return await self._channel.get_underlay_channel()
        await self.close()
        self._connection = await aio_pika.connect(self.url, timeout=5)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        log.info("events: connected to RabbitMQ, exchange %s", self.exchange_name)
        return await self._channel.get_underlay_channel()

    async def publish(self, shard: int, events: list[Published]) -> None:
        await (await self.send(shard, events))

    async def send(self, shard: int, events: list[Published]) -> Confirmation:
        """Write ``events`` (in order, after any page sent before) and return what resolves once
        the broker confirmed every one of them (or raises SinkError)."""
        from aiormq.abc import ChannelFrame

        async with self._lock:
            try:
                channel = await self._connect()
                frame_max = int(channel.connection.connection_tune.frame_max or 131072)
                confirms: list[asyncio.Future[Any]] = []
                parts: list[bytes] = []
                methods = self._methods
                async with channel.lock:
                    for event in events:
                        key = (channel.number, event.region, shard, event.type)
                        method = methods.get(key)
                        if method is None:
                            routing_key = cat.routing_key(event.region, shard, event.type)
                            method = methods[key] = method_frame(channel.number, self.exchange_name, routing_key)
                        parts.append(
                            message_frames(channel.number, "", "", event.id, event.type, event.body, frame_max, method)
                        )
                    first_tag = channel.delivery_tag + 1
                    for tag in range(first_tag, first_tag + len(events)):
                        confirm = channel.create_future()
                        channel.confirmations[tag] = confirm
                        confirms.append(confirm)
                    channel.delivery_tag = first_tag + len(events) - 1
                    drained = channel.create_future()
                    await channel.write_queue.put(
                        ChannelFrame(payload=b"".join(parts), should_close=False, drain_future=drained)
                    )
                await asyncio.wait_for(drained, CONFIRM_TIMEOUT_S)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                await self.close()
                raise SinkError(f"rabbitmq: {exc!r}") from exc
        return asyncio.ensure_future(self._confirmed(confirms))

    async def _confirmed(self, confirms: list[asyncio.Future[Any]]) -> None:
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                results = await asyncio.gather(*confirms, return_exceptions=True)
        except TimeoutError as exc:
            await self.close()
            raise SinkError(f"rabbitmq: no confirmation within {CONFIRM_TIMEOUT_S:.0f}s") from exc
        failed = [r for r in results if isinstance(r, BaseException) or type(r).__name__ != "Ack"]
        if failed:
            await self.close()
            raise SinkError(f"rabbitmq did not confirm {len(failed)} of {len(confirms)} events: {failed[0]!r}")

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception as exc:  # noqa: BLE001 (closing what failed may fail too)
                log.debug("events: closing the RabbitMQ connection: %r", exc)
