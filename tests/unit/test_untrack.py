"""The long-lived objects of a shard (accounts, holds, idempotency records) are untracked by the
cyclic GC, and safe to be: they reference only atomic values, so no cycle can run through
them (``balance.untrack``). A collection then walks the traffic in flight, not the pending
holds (benchmarks/tail-latency.md, session 12)."""

from __future__ import annotations

import gc

from balance.domain import commands as c
from balance.domain.ledger import Ledger
from balance.domain.model import Account, Hold
from balance.domain.outcomes import Record
from balance.untrack import untrack

T0 = 1_790_000_000_000_000
ATOMIC = (str, int, bytes, bool, float, type(None))


def _atomic(value: object) -> bool:
    if isinstance(value, tuple):
        return all(_atomic(item) for item in value)
    return type(value) in ATOMIC


def _shard_with_traffic() -> Ledger:
    """Two accounts, a hold with every optional field, plain holds, a capture, a release, a
    refusal: every kind of record the rules keep."""
    ledger = Ledger(0)
    commands: list[c.Command] = [
        c.CreateAccount("US-0-a", None, "partner", "US", "USD", "A", 0, b'{"k": 1}'),
        c.CreateAccount("US-0-b", None, "partner", "US", "USD", "B", 0, b"{}"),
        c.Credit("US-0-a", "fund", 10_000),
        c.PlaceHold("US-0-a", "full", 100, 900, "US-0-b", "an order", b'{"order": 7}'),
        *(c.PlaceHold("US-0-a", f"h{k}", 10, 900) for k in range(50)),
        c.CaptureHold("US-0-a", "h0", 5),
        c.ReleaseHold("US-0-a", "h1"),
        c.Debit("US-0-b", "too-much", 1),  # refused, and recorded
    ]
    for command in commands:
        ledger.begin()
        outcome = ledger.apply(command, T0)
        if outcome.record is not None:
            outcome.record.body = b"answer"  # as the engine does once the answer is rendered
        ledger.collect()
        ledger.accept()
    ledger.check_invariants()
    return ledger


def test_accounts_holds_and_records_are_untracked_and_hold_only_atomic_values() -> None:
    ledger = _shard_with_traffic()
    kept: list[object] = [*ledger.accounts.values(), *ledger.holds.values(), *ledger.records.values()]
    assert {type(obj) for obj in kept} == {Account, Hold, Record}
    assert len(ledger.holds) == 51 and len(ledger.records) >= 55
    for obj in kept:
        assert not gc.is_tracked(obj), obj
        # What the collector would have followed from it: atomic values only (the interpreted
        # class also shows its own type, which an instance keeps alive as any does).
        referents = [r for r in gc.get_referents(obj) if r is not type(obj)]
        assert all(_atomic(r) for r in referents), (obj, referents)
    full = ledger.holds.find("US-0-a", "full")
    assert full is not None and full.description == "an order" and full.metadata == b'{"order": 7}'


def test_the_containers_kept_per_hold_and_per_record_do_not_make_the_collector_walk_them() -> None:
    ledger = _shard_with_traffic()
    # The idempotency keys (two strings each) and the expiry wheel's buckets (holds only).
    assert ledger.records and not any(gc.is_tracked(key) for key in ledger.records)
    assert ledger.expiry.buckets
    for bucket in ledger.expiry.buckets.values():
        assert not gc.is_tracked(bucket) and all(type(hold) is Hold for hold in bucket)
    # A sweep rebuilds buckets (``keep``): still untracked.
    due = ledger.due_holds(T0 + 10**9 * 1_000_000, limit=3)
    assert len(due) == 3
    assert all(not gc.is_tracked(bucket) for bucket in ledger.expiry.buckets.values())


def test_records_changed_in_place_and_holds_settled_stay_untracked() -> None:
    ledger = _shard_with_traffic()
    captured, released = ledger.holds.find("US-0-a", "h0"), ledger.holds.find("US-0-a", "h1")
    assert captured is not None and captured.status == "captured" and not gc.is_tracked(captured)
    assert released is not None and released.status == "released" and not gc.is_tracked(released)
    assert all(record.body == b"answer" and not gc.is_tracked(record) for record in ledger.records.values())


def test_untracked_objects_are_freed_by_reference_counting_and_the_collector_still_runs() -> None:
    import weakref

    holds = [Hold("US-0-a", f"h{k}", 1, 0, "USD", "pending", None, T0, T0, T0, "", b"{}") for k in range(10_000)]
    assert not any(gc.is_tracked(hold) for hold in holds)
    del holds  # each dealloc untracks again: a no-op on an untracked object
    gc.collect()
    # A cycle elsewhere is still found and freed.

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_untrack_leaves_objects_without_gc_support_alone_and_may_be_called_twice() -> None:
    for value in (1, "text", b"bytes", None, 2**100, 1.5):
        untrack(value)
    record = Record(1, 200, b"x")
    untrack(record)
    untrack(record)
    assert not gc.is_tracked(record)
    listed = [1, 2]
    untrack(listed)
    assert not gc.is_tracked(listed)


def test_the_index_of_holds_and_of_accounts_frozen_at_recovery_stay_out_of_collections() -> None:
    """Recovery freezes what it made (``engine.recovery``); the two dicts that grow with the
    pending holds and the accounts are tracked from the start, so they are frozen with it even
    when the shard was empty, and no later collection walks the holds and accounts put in them."""
    ledger = Ledger(0)
    assert gc.is_tracked(ledger.holds._by_id) and gc.is_tracked(ledger.accounts)
    gc.freeze()  # as recovery does once the ledger is loaded
    try:
        ledger.begin()
        ledger.apply(c.CreateAccount("US-0-a", None, "partner", "US", "USD", "A", 0, b"{}"), T0)
        ledger.apply(c.Credit("US-0-a", "fund", 10_000), T0)
        for k in range(100):
            ledger.apply(c.PlaceHold("US-0-a", f"h{k}", 10, 900), T0)
        ledger.collect()
        ledger.accept()
        gc.collect()
        walked = {id(obj) for obj in gc.get_objects()}  # every generation a collection walks
        assert id(ledger.holds._by_id) not in walked and id(ledger.accounts) not in walked
        assert len(ledger.holds) == 100 and gc.is_tracked(ledger.holds._by_id)
    finally:
        gc.unfreeze()


def test_a_dict_tracked_from_the_start_stays_as_compact_as_a_plain_one() -> None:
    """A non-str mark would turn the table into the general kind for good (a hash per entry:
    11 B more per pending hold, measured)."""
    import sys

    from balance.untrack import tracked

    plain, early = {}, tracked({})
    for k in range(1000):
        plain[f"hold-{k}"] = early[f"hold-{k}"] = k
    assert gc.is_tracked(early) and sys.getsizeof(early) == sys.getsizeof(plain)
