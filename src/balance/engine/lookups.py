"""Look-ups before a batch is applied: the few things memory may not hold (old holds, and
the first outcomes of old operation ids) read from storage into the ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.domain.model import Hold

if TYPE_CHECKING:
    from balance.engine.shard import ShardEngine


async def prefetch(engine: ShardEngine, commands: list[c.Command]) -> None:
    """Read the few things memory may not hold: old holds and old first outcomes.

    Two rounds: what the first loads can call for more. A finished hold loaded for a
    capture or release makes a replayed placement of the same hold (same batch) need its
    first outcome, which it did not need while the hold was out of memory.
    """
    asked: set[tuple[str, str, str]] = set()
    for _ in range(2):
        op_keys: list[tuple[str, str]] = []
        hold_keys: list[tuple[str, str]] = []
        for command in commands:
            ops, holds = engine.ledger.lookups_needed(command)
            op_keys += [key for key in ops if ("op", *key) not in asked]
            hold_keys += [key for key in holds if ("hold", *key) not in asked]
        if not op_keys and not hold_keys:
            return
        asked.update(("op", *key) for key in op_keys)
        asked.update(("hold", *key) for key in hold_keys)
        await load(engine, op_keys, hold_keys)


async def load(engine: ShardEngine, op_keys: list[tuple[str, str]], hold_keys: list[tuple[str, str]]) -> int:
    """Read first outcomes and holds into memory; how many outcomes were new to it."""
    operations, holds = await engine.storage.lookup(op_keys, hold_keys)
    learned = 0
    for op in operations:
        learned += (op.account_id, op.op_key) not in engine.ledger.records
        engine.ledger.load_record(op.account_id, op.op_key, op.fingerprint, op.status, op.result)
    for row in holds:
        engine.ledger.load_hold(Hold(*row))
    return learned
