"""NATS JetStream through nats-py: stream ``BALANCE_EVENTS`` on ``balance.events.>``, each
message with ``Nats-Msg-Id`` = the event id (the server drops a re-sent one within its
duplicate window), each publish acknowledged by the stream."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from balance.events import catalogue as cat
from balance.events.stream import Published
from balance.relay.sink import Confirmation, SinkError

log = logging.getLogger("balance.relay")

ACK_TIMEOUT_S = 30.0


class NatsSink:
    name = "nats"

    def __init__(self, url: str, stream: str = cat.NATS_STREAM, prefix: str = cat.NATS_SUBJECT_PREFIX) -> None:
        self.url, self.stream, self.prefix = url, stream, prefix
        self._nc: Any = None
        self._js: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        import nats
        from nats.js.errors import NotFoundError

        if self._nc is not None and self._nc.is_connected:
            return self._js
        await self.close()
        # No reconnecting inside the client: a publish during an outage fails at once and the
        # relay retries the page (the client would otherwise buffer it without bound).
        self._nc = await nats.connect(
            self.url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=1, reconnect_time_wait=0.1,
            error_cb=_quiet, disconnected_cb=_nothing, closed_cb=_nothing,
        )  # fmt: skip
        self._js = self._nc.jetstream(timeout=ACK_TIMEOUT_S)
        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            await self._js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])
        log.info("events: connected to NATS, stream %s", self.stream)
        return self._js

    async def publish(self, shard: int, events: list[Published]) -> None:
        await (await self.send(shard, events))

    async def send(self, shard: int, events: list[Published]) -> Confirmation:
        """Publish ``events`` in order; what it returns resolves once the stream acknowledged all."""
        async with self._lock:
            try:
                js = await self._connect()
                acks = []
                for event in events:
                    subject = cat.subject(event.region, shard, event.type, self.prefix)
                    acks.append(await js.publish_async(subject, event.body, headers={"Nats-Msg-Id": event.id}))
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                await self.close()
                raise SinkError(f"nats: {exc!r}") from exc
        return asyncio.ensure_future(self._all_acknowledged(acks, len(events)))

    async def _all_acknowledged(self, acks: list[asyncio.Future[Any]], count: int) -> None:
        try:
            results = await self._acknowledged(acks)
        except SinkError:
            await self.close()
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.close()
            raise SinkError(f"nats did not acknowledge {len(failed)} of {count} events: {failed[0]!r}")

    async def _acknowledged(self, acks: list[asyncio.Future[Any]]) -> list[Any]:
        """The stream's answers; a connection lost meanwhile fails at once (its acks never come)."""
        gathered = asyncio.gather(*acks, return_exceptions=True)
        deadline = asyncio.get_running_loop().time() + ACK_TIMEOUT_S
        while not gathered.done():
            await asyncio.wait([gathered], timeout=0.1)
            if not gathered.done() and (self._nc is None or not self._nc.is_connected):
                gathered.cancel()
                raise SinkError("nats: the connection was lost before every publish was acknowledged")
            if asyncio.get_running_loop().time() > deadline:
                gathered.cancel()
                raise SinkError(f"nats: no acknowledgement within {ACK_TIMEOUT_S:.0f}s")
        return list(gathered.result())

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("events: closing the NATS connection: %r", exc)


async def _quiet(exc: Exception) -> None:
    """The client's own error reports: the relay reports a failed page once (``ShardRelay._wait``)."""
    log.debug("nats client: %r", exc)


async def _nothing() -> None:
    return None
