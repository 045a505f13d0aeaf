"""A partner move's durable record, kept in the source shard's own database (``moves`` table),
so that whoever recovers the source shard (this node after a restart, or another after a
takeover) finds a move that left and finishes it.

The first row (part 0) says where the move is; the export (accounts, holds and first answers
of the subtree, compressed) follows in parts of a bounded size (a row stays well below any
packet limit). The rows are written in the same commit as the move out (``MoveOut.record``):
before that commit nothing is durable and nothing is to resume (the freeze is in memory; a
restart thaws it). Later steps rewrite the rows (``RecordMove``); the last one empties the
export's parts.
"""

from __future__ import annotations

from typing import Any

from balance.domain import commands as c
from balance.domain.outcomes import Outcome

MOVE_RECORD_FIELDS = (
    "move_id", "part", "root_id", "from_shard", "to_shard", "step", "source_seq", "error", "updated_at", "data",
)  # fmt: skip
SOURCE_SEQ = MOVE_RECORD_FIELDS.index("source_seq")
UPDATED_AT = MOVE_RECORD_FIELDS.index("updated_at")


def stamped(rows: tuple[tuple[Any, ...], ...], source_seq: int, now: int) -> list[tuple[Any, ...]]:
    """The record's rows with the seq of the move out (the events' barrier) and the time."""
    return [(*row[:SOURCE_SEQ], source_seq, row[SOURCE_SEQ + 1], now, *row[UPDATED_AT + 1 :]) for row in rows]


def record_move(ledger: Any, cmd: c.RecordMove, now: int) -> Outcome:
    """A later step of the move (``moved_in``, ``done``, ``rolled_back``) into its record."""
    ledger.changes.moves.extend((*row[:UPDATED_AT], now, *row[UPDATED_AT + 1 :]) for row in cmd.rows)
    return Outcome(200)
