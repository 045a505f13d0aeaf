"""The relay's own AMQP connection against the real RabbitMQ: confirms per page, the broker's
refusals and closes fail the page (the relay sends it again), large bodies split into frames."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from balance.events.stream import Published
from balance.relay.amqp import AmqpSink
from balance.relay.amqp_link import AmqpLink
from balance.relay.sink import SinkError

AMQP_URL = os.environ.get("BALANCE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
async def rabbit() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"RabbitMQ not reachable at {AMQP_URL}: {exc!r}")
    channel = await connection.channel()
    yield channel
    await connection.close()


def events(count: int, size: int = 40, first: int = 1) -> list[Published]:
    return [
        Published(f"EU-0-e{seq}.transaction.created", "transaction.created", seq, "EU", "EU-0-aaaa",
                  b'{"seq":%d,"pad":"%b"}' % (seq, b"x" * size))
        for seq in range(first, first + count)
    ]  # fmt: skip


async def test_pages_are_confirmed_and_arrive_whole_in_order_large_bodies_too(
    rabbit: aio_pika.abc.AbstractChannel,
) -> None:
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    declared = await rabbit.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await rabbit.declare_queue(f"test-link-{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(declared, "#")
    sink = AmqpSink(AMQP_URL, exchange)
    sent = events(300) + events(2, size=300_000, first=301)  # two bodies past the frame size (131,072)
    confirmations = [await sink.send(0, sent[at : at + 50]) for at in range(0, len(sent), 50)]
    await asyncio.wait_for(asyncio.gather(*confirmations), 30)
    got = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=1)) is not None:
        got.append(message)
    assert [m.body for m in got] == [e.body for e in sent]
    assert [m.message_id for m in got] == [e.id for e in sent]
    assert {m.delivery_mode for m in got} == {aio_pika.DeliveryMode.PERSISTENT}
    assert got[0].routing_key == "EU.0.transaction.created" and got[0].type == "transaction.created"
    await sink.close()
    await rabbit.exchange_delete(exchange)


async def test_the_broker_closing_the_channel_fails_the_page_and_the_next_send_reconnects(
    rabbit: aio_pika.abc.AbstractChannel,
) -> None:
    exchange = f"balance.events.test-{uuid.uuid4().hex[:8]}"
    sink = AmqpSink(AMQP_URL, exchange)
    await (await sink.send(0, events(5)))
    await rabbit.exchange_delete(exchange)  # publishing to it now: the broker closes the channel (404)
    with pytest.raises(SinkError, match="404|closed|lost"):
        await asyncio.wait_for(await sink.send(0, events(5, first=6)), 10)
    await asyncio.wait_for(await sink.send(0, events(5, first=6)), 10)  # a new connection declares it again
    await rabbit.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True, passive=True)
    await sink.close()
    await rabbit.exchange_delete(exchange)


async def test_a_refused_login_is_a_sink_error() -> None:
    sink = AmqpSink(AMQP_URL.replace("guest:guest", "guest:wrong"), "balance.events.never")
    with pytest.raises(SinkError, match="ACCESS_REFUSED|closed|lost"):
        await sink.send(0, events(1))
    await sink.close()


async def test_nothing_listening_is_a_sink_error() -> None:
    with pytest.raises(SinkError, match="connect"):
        await AmqpLink.open("amqp://guest:guest@127.0.0.1:1/", "x", timeout=2)


async def test_confirms_out_of_order_and_multiple_move_the_confirmed_tag_only_past_a_whole_prefix() -> None:
    link = AmqpLink()
    link._ack(2, 0)
    link._ack(3, 0)
    assert link.confirmed == 0  # 1 not yet
    link._ack(1, 0)
    assert link.confirmed == 3
    link._ack(6, 0)
    link._ack(5, 1)  # everything up to 5
    assert link.confirmed == 6
    link._ack(4, 0)  # a repeat below: nothing moves back
    assert link.confirmed == 6
