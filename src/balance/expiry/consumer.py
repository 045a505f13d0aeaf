"""The engine's side of the expiry job: ``hold.expiry-due`` notices become ``ExpireHold``
commands, journaled like the sweep's.

Idempotent: a notice of a hold already settled (expired by an earlier notice or by the sweep,
captured, released) or unknown is acknowledged and does nothing; the ledger's rule checks
again, in the writer, that the hold is pending and past its expiry by the engine's clock (a
job whose clock runs ahead cannot expire a hold early: the notice is dropped, the job
announces it again later). A notice is acknowledged only after the expiry is committed.
Consumers run in the service's process while a broker is configured (``ExpiryConfig.notices``);
the engine's own sweep then only expires holds overdue by more than ``fallback_s``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from balance.domain import commands as c
from balance.domain.model import HOLD_PENDING
from balance.engine.recovery import Backoff
from balance.engine.replies import Unavailable
from balance.engine.shard import READY, ShardEngine
from balance.expiry.brokers import NoticeBroker, NoticeError, Retry, brokers
from balance.expiry.config import ExpiryConfig
from balance.expiry.notices import decode

log = logging.getLogger("balance.expiry")

PREFETCH = 512  # notices in flight per shard and broker (a few ms of the writer, like a sweep slice)


async def expire_noticed(engine: ShardEngine, body: bytes) -> str:
    """Handle one notice; the outcome (a metric's label). Raises ``Retry`` if the shard cannot now."""
    notice = decode(body)
    if notice is None or notice.shard != engine.shard:
        outcome = "invalid"
    elif engine.state != READY:
        raise Retry(f"shard {engine.shard} is {engine.state}")
    else:
        hold = engine.ledger.holds.find(notice.account_id, notice.hold_id)
        if hold is None or hold.status != HOLD_PENDING:
            outcome = "settled"
        elif hold.expires_at > engine.clock():
            outcome = "early"
        else:
            try:
                reply = await engine.enqueue(c.ExpireHold(notice.account_id, notice.hold_id))
            except Unavailable as exc:
                raise Retry(exc.detail) from None
            if reply.status >= 500:  # the commit failed and was undone
                raise Retry(f"shard {engine.shard}: expiry not committed ({reply.status})")
            outcome = "expired" if reply.status == 200 else "settled"
            if reply.status == 200:
                engine.metrics.holds_expired.labels(engine.label).inc()
    engine.metrics.expiry_notices_handled.labels(engine.label, outcome).inc()
    return outcome


async def consume(engine: ShardEngine, broker: NoticeBroker, backoff: Backoff | None = None) -> None:
    """One shard's notices from one broker, for as long as it runs; a broker away is retried."""
    backoff = backoff or Backoff()
    failures = 0

    async def handler(body: bytes) -> None:
        await expire_noticed(engine, body)

    while True:
        while engine.state != READY:  # recovering: the notices wait in the broker
            await asyncio.sleep(0.2)
        try:
            await broker.consume(engine.shard, handler, PREFETCH)
        except NoticeError as exc:
            failures += 1
            delay = backoff.delay(failures)
            if failures == 1 or failures % 10 == 0:
                log.warning("expiry shard %s <- %s: consumer failed (attempt %d), retrying in %.2fs: %s",
                            engine.shard, broker.name, failures, delay, exc)  # fmt: skip
            await backoff.sleep(delay)


def start_consumers(engines: list[ShardEngine], config: ExpiryConfig, region: str) -> Callable[[], Awaitable[None]]:
    """Job mode: a consumer per shard and broker, each engine's sweep made the fallback, and
    (``process``) the job as a child process. Returns what stops them."""
    if not config.notices:
        return _nothing
    pairs: list[tuple[ShardEngine, NoticeBroker]] = []
    for engine in engines:
        engine.expiry_fallback_s = config.fallback_s
        pairs += [(engine, broker) for broker in brokers(config, region)]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(consume(engine, broker)) for engine, broker in pairs]
    child = None if config.mode != "process" else _supervised_job(tasks)

    async def stop() -> None:
        if child is not None:
            await child()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, broker in pairs:
            await broker.close()

    return stop


def _supervised_job(tasks: list[asyncio.Task[None]]) -> Callable[[], Awaitable[None]]:
    """``balance-service expiry-job`` as a child process, started again if it exits on its own."""
    from balance.expiry.job import spawn

    children = [spawn()]

    async def supervise() -> None:
        while True:
            await asyncio.sleep(1.0)
            code = children[-1].poll()
            if code is not None:
                log.error("the expiry job exited (%s); starting it again", code)
                children.append(spawn())

    tasks.append(asyncio.get_running_loop().create_task(supervise()))

    async def stop_child() -> None:
        tasks[-1].cancel()
        child = children[-1]
        child.terminate()
        for _ in range(100):
            if child.poll() is not None:
                return
            await asyncio.sleep(0.05)
        child.kill()
        child.wait()

    return stop_child


async def _nothing() -> None:
    return None
