"""What the relay asks of a broker: publish these events, confirmed, or raise ``SinkError``."""

from __future__ import annotations

import asyncio
from typing import Protocol

from balance.events.stream import Published

Confirmation = asyncio.Future[None]  # resolves once the broker confirmed a page; raises SinkError otherwise


class SinkError(Exception):
    """The broker is away or refused: nothing of the call counts as published (retry it)."""


class Sink(Protocol):
    name: str  # "amqp" | "nats": names the cursor (``event_reads.cursor_name``)

    async def publish(self, shard: int, events: list[Published]) -> None:
        """All of ``events``, in order, each confirmed by the broker; or raise SinkError."""

    async def send(self, shard: int, events: list[Published]) -> Confirmation:
        """Hand ``events`` to the broker, in order after the pages sent before; the confirmation
        comes later (the relay sends the next page meanwhile). Raise SinkError if it cannot."""

    async def close(self) -> None: ...
