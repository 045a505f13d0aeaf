"""NATS JetStream: stream ``BALANCE_RESULTS`` on subject ``balance.payment-results``, read by the
durable pull consumer ``balance-results`` with explicit acks.

A fetched batch (up to ``prefetch``) is applied concurrently (one group commit per shard); each
message is acknowledged only after its outcome committed. JetStream has no dead-letter exchange:
what can never apply is published to subject ``balance.dead-letters`` (kept by stream
``BALANCE_DEAD_LETTERS``, created if missing) with the reason in the ``x-balance-reason`` header,
the publish acknowledged by that stream, and only then the original is acknowledged. What the
engine could not take now is ``nak``-ed with a delay (redelivered later).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from balance.results import message as m
from balance.results.applier import ResultApplier
from balance.results.backoff import RetryDelay
from balance.results.config import ResultsConfig

log = logging.getLogger("balance.results")

RECONNECT_S = 2.0
FETCH_WAIT_S = 1.0
ACK_WAIT_S = 30.0
BATCHES_IN_FLIGHT = 4  # unacknowledged this long (the service died mid-apply): redelivered


async def declare(js: Any, config: ResultsConfig) -> None:
    """The results stream and the dead letters' stream, if missing."""
    from nats.js.errors import NotFoundError

    for stream, subject in ((config.nats_stream, config.subject), (config.dead_letters_stream, config.dead_letters)):
        try:
            await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(name=stream, subjects=[subject])


class NatsResults:
    broker = "nats"

    def __init__(self, config: ResultsConfig, applier: ResultApplier) -> None:
        assert config.nats_url is not None
        self.url: str = config.nats_url
        self.config, self.applier = config, applier
        self.delay = RetryDelay()
        self._nc: Any = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        while True:
            try:
                self._nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=-1, error_cb=_quiet)
                js = self._nc.jetstream()
                await declare(js, self.config)
                consumer = ConsumerConfig(
                    durable_name=self.config.nats_durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                    max_ack_pending=max(1024, 2 * BATCHES_IN_FLIGHT * self.config.prefetch),
                )  # fmt: skip
                subscription = await js.pull_subscribe(
                    self.config.subject, durable=self.config.nats_durable, stream=self.config.nats_stream,
                    config=consumer,
                )  # fmt: skip
                log.info("payment results: consuming NATS subject %s", self.config.subject)
                self.connected.set()
                await self._consume(js, subscription)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (server away: try again)
                log.warning("payment results: NATS %r; retrying in %.0fs", exc, RECONNECT_S)
            finally:
                self.connected.clear()
                await self._close()
            await asyncio.sleep(RECONNECT_S)

    async def _consume(self, js: Any, subscription: Any) -> None:
        import nats.errors

        # The next batch is fetched while the last ones are applied (their commits overlap),
        # up to ``BATCHES_IN_FLIGHT`` batches.
        room = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        batches: set[asyncio.Task[None]] = set()
        try:
            while True:
                await room.acquire()
                try:
                    messages = await subscription.fetch(self.config.prefetch, timeout=FETCH_WAIT_S)
                except (TimeoutError, nats.errors.TimeoutError):
                    room.release()
                    continue
                except BaseException:
                    room.release()
                    raise
                batch = asyncio.create_task(self._batch(js, messages, room))
                batches.add(batch)
                batch.add_done_callback(batches.discard)
        finally:
            for batch in list(batches):
                batch.cancel()

    async def _batch(self, js: Any, messages: list[Any], room: asyncio.Semaphore) -> None:
        try:
            await asyncio.gather(*(self._one(js, message) for message in messages))
        finally:
            room.release()

    async def _one(self, js: Any, message: Any) -> None:
        try:
            verdict, result = await self.applier.apply(message.data)
            if verdict.action == m.ACK:
                await message.ack()
                self.delay.reset()
            elif verdict.action == m.DEAD_LETTER:
                # The gateway's own headers go along, not JetStream's (an id or an expectation
                # of the results stream would make the dead letter's publish fail or be dropped).
                headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("Nats-")}
                headers[m.REASON_HEADER] = verdict.outcome
                headers[m.DETAIL_HEADER] = verdict.detail[:1000].replace("\r", " ").replace("\n", " ")
                if result is not None:
                    headers[m.MESSAGE_ID_HEADER] = result.id
                await js.publish(self.config.dead_letters, message.data, headers=headers)  # acknowledged by its stream
                await message.ack()
            else:
                await message.nak(delay=self.delay.next())
            self.applier.settled(self.broker, verdict, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (connection lost: redelivered after ack_wait)
            log.warning("payment results: a NATS message was left unacknowledged: %r", exc)

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("payment results: closing NATS: %r", exc)

    async def stop(self) -> None:
        await self._close()


async def _quiet(exc: Exception) -> None:
    log.debug("nats client (results): %r", exc)
