"""Recovery: a shard's ledger loaded from storage (the checkpoint tables, then the journal
written since), at start and after a failed commit that landed anyway.

A database that is away is waited for, not given up on: each failed attempt is one log line
and a ``retrying`` state with the last error (``/readyz`` shows both), then another attempt
after a capped, jittered backoff (``Backoff``; its sleep and randomness are injectable)."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from balance.domain.holds import HOLD_JOURNAL_SEQ
from balance.domain.ledger import Ledger
from balance.domain.model import ACCOUNT_ID, HOLD_ACCOUNT_ID, HOLD_EXPIRES_AT, HOLD_ID, Account, Hold
from balance.storage.base import HOLD_KEY_FIRST

if TYPE_CHECKING:
    from balance.engine.shard import ShardEngine

RECOVERY_PAGE_ROWS = 20_000
RETRY_FIRST_S = 0.1  # the first wait after a failed attempt (at most; jittered below it)
RETRY_CAP_S = 1.0  # no wait is longer: a database that is back is found within about a second


class Backoff:
    """Capped exponential backoff with "equal jitter": the n-th wait is drawn from
    [c/2, c] where c = min(cap, first * 2**(n-1)). The jitter keeps many shards (and
    processes) from hammering a database that has just come back in lockstep; the half
    that is not random keeps the waits growing. ``sleep`` and ``rng`` are seams for tests."""

    def __init__(
        self,
        first_s: float = RETRY_FIRST_S,
        cap_s: float = RETRY_CAP_S,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not 0 < first_s <= cap_s:
            raise ValueError("backoff needs 0 < first_s <= cap_s")
        self.first_s = first_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1, 2, ...)."""
        ceiling = min(self.cap_s, self.first_s * 2.0 ** min(attempt - 1, 60))
        return ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)


async def load_ledger(engine: ShardEngine) -> Ledger:
    """Recovery: every account and pending hold, ``reserved`` rebuilt, invariants checked.

    The cyclic GC is paused while millions of objects are built (they hold no cycles; each
    collection would walk them all again), and what was loaded is then frozen out of later
    full collections: it lives as long as the process."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        ledger = await read_ledger(engine)
    finally:
        if collecting:
            gc.enable()
    gc.freeze()
    return ledger


async def read_ledger(engine: ShardEngine) -> Ledger:
    storage, ledger = engine.storage, Ledger(engine.shard, **engine.ledger_limits)
    accounts = ledger.accounts
    # Pages are read ahead: the next page is on its way while this one becomes objects.
    next_page = asyncio.ensure_future(storage.scan_accounts("", RECOVERY_PAGE_ROWS))
    while rows := await next_page:
        next_page = asyncio.ensure_future(storage.scan_accounts(rows[-1][ACCOUNT_ID], RECOVERY_PAGE_ROWS))
        for row in rows:
            ledger.load_account(Account.from_row(row))
    next_holds = asyncio.ensure_future(storage.scan_pending_holds(HOLD_KEY_FIRST, RECOVERY_PAGE_ROWS))
    while rows := await next_holds:
        last = rows[-1]
        next_holds = asyncio.ensure_future(
            storage.scan_pending_holds(
                (last[HOLD_EXPIRES_AT], last[HOLD_ACCOUNT_ID], last[HOLD_ID]), RECOVERY_PAGE_ROWS
            )
        )
        for row in rows:
            owner = accounts.get(row[HOLD_ACCOUNT_ID])
            ledger.load_hold(Hold.from_row(row, None if owner is None else owner.id))
    # The tables are a checkpoint: what the journal says of accounts and holds since, on top.
    checkpoint = seq = await storage.checkpoint_seq()
    while rows := await storage.scan_recovery_journal(seq, RECOVERY_PAGE_ROWS):
        for row in rows:
            ledger.replay_journal_row(row)
        seq = rows[-1][HOLD_JOURNAL_SEQ]  # recovery rows begin with a hold row's fields
    engine.checkpoint_from = checkpoint
    ledger.next_seq = await storage.max_seq() + 1
    for row in await storage.pending_transfers():  # money out in flight: its source stays open
        ledger.mark(ledger.outbound, row[0], row[1], True)
    # ``reserved`` was stored; check_invariants recomputes it from the pending holds.
    ledger.check_invariants()
    return ledger
