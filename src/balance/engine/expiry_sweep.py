"""The expiry sweep: every ``sweep_interval_s``, the holds past their expiry are queued as
``ExpireHold`` commands, journaled like any other change."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.engine.replies import Unavailable

if TYPE_CHECKING:
    from balance.engine.shard import ShardEngine


async def sweep_loop(engine: ShardEngine) -> None:
    while True:
        await asyncio.sleep(engine.sweep_interval_s)
        try:
            await sweep(engine)
        except Unavailable:
            pass


async def sweep(engine: ShardEngine) -> int:
    """Expire every pending hold past its expiry; journaled like any other change."""
    due = engine.ledger.due_holds(engine.clock(), limit=engine.batch_max * 4)
    if not due:
        return 0
    try:
        futures = [engine.enqueue(c.ExpireHold(account_id, hold_id)) for account_id, hold_id in due]
    except Unavailable:
        for account_id, hold_id in due:  # not queued: keep them due for the next sweep
            engine.ledger.rearm(account_id, hold_id)
        raise
    replies = await asyncio.gather(*futures)
    expired = sum(1 for reply in replies if reply.status == 200)
    engine.metrics.holds_expired.labels(engine.label).inc(expired)
    return expired
