"""The inbound marks a node keeps on its shards for holds of other shards that name their
accounts (``ledger.inbound_hold_mark``: a close of the account answers ``account_not_empty``
while one is there), and how they are rebuilt.

The marks are in memory on the destination's node, set and dropped by the holds' nodes
(``POST /internal/v1/shards/{n}/hold-mark``: set before the hold is placed, dropped once it
is settled or was not placed). They are rebuilt by asking, not made durable: at start and
after a takeover the destination's node asks every other node for the holds of the shards
it owns that name accounts of its own shards (``POST /internal/v1/holds-naming``), and asks
again every ``MARKS_RESYNC_S`` (30 s), which also drops a mark whose drop was lost (its
holder crashed between marking and placing, the network failed). Until every shard of the fleet has answered once
since the destination's shard was recovered, a close there answers 503 (never a close that a
pending hold should have refused). Why not durable marks: a mark written on the destination's
shard costs two more commits per hold, and a mark left behind by a crash still has to be
checked with the hold's node; the hold's own shard is the record, so asking it is enough.

A node's answer is a snapshot taken while marks keep coming, so each change is stamped: a
sync drops only marks set before it asked (a hold placed since is not in the snapshot) and
adds none dropped since it asked (a hold settled since may still be in it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from balance.domain.ledger import INBOUND_HOLD
from balance.shards import shard_in_id

Mark = tuple[str, str]  # (destination account, ``inbound_hold_mark``)


def source_shard(mark: str, shard_of: Callable[[str], int | None] = shard_in_id) -> int | None:
    """The shard of the hold a mark stands for (where its account lives)."""
    return shard_of(mark[len(INBOUND_HOLD) :].split(":", 1)[0])


class RemoteMarks:
    """The marks set here by holds of other shards, each with the stamp of its last change."""

    def __init__(self, shard_of: Callable[[str], int | None] = shard_in_id) -> None:
        self.shard_of = shard_of  # where an account lives (``Placement.shard_of`` in a node)
        self.stamp = 0
        self.marks: dict[Mark, int] = {}
        self.dropped: dict[Mark, int] = {}  # marks dropped since the oldest sync in progress began

    def change(self, mark: Mark, add: bool) -> None:
        self.stamp += 1
        if add:
            self.marks[mark] = self.stamp
            self.dropped.pop(mark, None)
        else:
            self.marks.pop(mark, None)
            self.dropped[mark] = self.stamp

    def resync(
        self, asked_at: int, wanted: Iterable[Mark], sources: set[int], targets: set[int]
    ) -> tuple[list[Mark], list[Mark]]:
        """The marks to add and to drop after a snapshot asked for at stamp ``asked_at`` of the
        holds of shards ``sources`` that name accounts of shards ``targets`` (applied here)."""
        wanted = set(wanted)
        add = [m for m in wanted if m not in self.marks and self.dropped.get(m, 0) <= asked_at]
        drop = [
            m
            for m, stamp in self.marks.items()
            if m not in wanted
            and stamp <= asked_at
            and source_shard(m[1], self.shard_of) in sources
            and self.shard_of(m[0]) in targets
        ]
        for m in add:
            self.change(m, True)
        for m in drop:
            self.change(m, False)
        return add, drop

    def forget_older(self, stamp: int) -> None:
        """No sync asked before ``stamp`` is in progress: older drops no longer matter."""
        self.dropped = {m: s for m, s in self.dropped.items() if s > stamp}

    def forget_shard(self, shard: int) -> None:
        """The shard's engine is gone (lost, or owned anew: its marks are rebuilt)."""
        self.marks = {m: s for m, s in self.marks.items() if self.shard_of(m[0]) != shard}
