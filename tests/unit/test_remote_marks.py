"""The marks of other nodes' holds kept on a node (``node.remote_marks``): a sync's snapshot
races with marks set and dropped while it is asked for, and must neither drop a mark set since
nor bring back one dropped since."""

from __future__ import annotations

from balance.domain.ledger import inbound_hold_mark
from balance.node.remote_marks import RemoteMarks, source_shard

A = ("US-1-merchant", inbound_hold_mark("US-0-payer", "h1"))
B = ("US-1-merchant", inbound_hold_mark("US-0-payer", "h2"))
C = ("US-1-shop", inbound_hold_mark("US-2-payer", "h3"))


def test_a_mark_names_the_shard_of_its_hold() -> None:
    assert source_shard(A[1]) == 0 and source_shard(C[1]) == 2


def test_a_sync_adds_what_is_missing_and_drops_what_is_no_longer_there() -> None:
    marks = RemoteMarks()
    marks.change(A, True)
    asked = marks.stamp
    added, dropped = marks.resync(asked, [B], sources={0}, targets={1})
    assert added == [B] and dropped == [A] and set(marks.marks) == {B}


def test_a_sync_keeps_a_mark_set_after_it_asked_and_marks_of_shards_that_did_not_answer() -> None:
    marks = RemoteMarks()
    marks.change(C, True)  # shard 2 does not answer this time
    asked = marks.stamp
    marks.change(A, True)  # a hold being placed now: not in the snapshot
    added, dropped = marks.resync(asked, [], sources={0}, targets={1})
    assert added == [] and dropped == [] and set(marks.marks) == {A, C}


def test_a_sync_does_not_bring_back_a_mark_dropped_after_it_asked() -> None:
    marks = RemoteMarks()
    marks.change(A, True)
    asked = marks.stamp
    marks.change(A, False)  # settled while the snapshot (which still has it) was on its way
    added, dropped = marks.resync(asked, [A], sources={0}, targets={1})
    assert added == [] and dropped == [] and A not in marks.marks
    marks.forget_older(marks.stamp)
    added, _ = marks.resync(marks.stamp, [A], sources={0}, targets={1})  # placed again later: marked
    assert added == [A]


def test_a_shard_owned_anew_forgets_its_marks() -> None:
    marks = RemoteMarks()
    marks.change(A, True)
    marks.change(C, True)
    marks.forget_shard(1)
    assert marks.marks == {}
