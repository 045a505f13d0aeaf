"""What the relay asks of a broker: publish these events, confirmed, or raise ``SinkError``."""

from __future__ import annotations

from typing import Protocol

from balance.events.stream import Published


class SinkError(Exception):
    """The broker is away or refused: nothing of the call counts as published (retry it)."""


class Sink(Protocol):
    name: str  # "amqp" | "nats": names the cursor (``event_reads.cursor_name``)

    async def publish(self, shard: int, events: list[Published]) -> None:
        """All of ``events``, in order, each confirmed by the broker; or raise SinkError."""

    async def close(self) -> None: ...
