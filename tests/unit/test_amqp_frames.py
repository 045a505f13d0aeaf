"""The relay's hand-built AMQP frames are byte for byte what pamqp (aio-pika's codec) makes."""

from __future__ import annotations

import pamqp.frame
from pamqp import commands, header
from pamqp.body import ContentBody

from balance.relay.amqp import message_frames


def pamqp_frames(
    channel: int, exchange: str, routing_key: str, message_id: str, event_type: str, body: bytes, frame_max: int
) -> bytes:
    properties = commands.Basic.Properties(
        content_type="application/json", delivery_mode=2, message_id=message_id, message_type=event_type
    )
    frames = [
        commands.Basic.Publish(exchange=exchange, routing_key=routing_key),
        header.ContentHeader(0, len(body), properties),
    ]
    step = frame_max - 8
    frames += [ContentBody(body[i : i + step]) for i in range(0, len(body), step)]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


def test_a_small_event_is_one_body_frame_like_pamqps() -> None:
    args = (1, "balance.events", "EU.0.transaction.created", "EU-0-e12.transaction.created", "transaction.created")
    body = b'{"id":"EU-0-e12.transaction.created"}'
    assert message_frames(*args, body, 131072) == pamqp_frames(*args, body, 131072)


def test_a_body_past_the_frame_size_is_split_like_pamqps() -> None:
    args = (7, "x", "US.3.account.updated", "US-3-e9.account.updated", "account.updated")
    body = bytes(range(256)) * 40
    assert message_frames(*args, body, 4096) == pamqp_frames(*args, body, 4096)


def test_a_cached_method_frame_gives_the_same_bytes() -> None:
    from balance.relay.amqp import method_frame

    args = (3, "balance.events", "ASIA.2.hold.updated", "ASIA-2-e5.hold.updated", "hold.updated")
    body = b'{"id":"ASIA-2-e5.hold.updated"}'
    method = method_frame(3, "balance.events", "ASIA.2.hold.updated")
    assert message_frames(3, "", "", *args[3:], body, 131072, method) == pamqp_frames(*args, body, 131072)


def test_a_page_of_frames_is_each_message_like_pamqps_large_bodies_split() -> None:
    from balance.events.stream import Published
    from balance.relay.amqp import AmqpSink

    events = [
        Published("EU-0-e5.transaction.created", "transaction.created", 5, "EU", "EU-0-aaaa", b'{"a":1}'),
        Published("EU-0-e5.hold.updated", "hold.updated", 5, "EU", "EU-0-aaaa", b'{"b":"' + b"x" * 5000 + b'"}'),
        Published("US-0-e6.account.updated", "account.updated", 6, "US", "US-0-bbbb", b"{}"),
    ]
    sink = AmqpSink("amqp://guest:guest@127.0.0.1:5672/", "balance.events")
    expected = b"".join(
        pamqp_frames(1, "balance.events", f"{e.region}.0.{e.type}", e.id, e.type, e.body, 4096) for e in events
    )
    assert sink._frames(0, events, 4096) == expected
    assert sink._frames(0, events, 4096) == expected  # the second time from the cached parts
