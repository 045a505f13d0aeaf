"""The expiry wheel (issue 18): a burst of holds expiring in the same second is taken a slice
at a time at the cost of the slice, not of the bucket, and every due live hold comes out once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from balance.domain.expiry import ExpiryWheel
from balance.domain.model import Hold

SECOND = 1_000_000


def hold(n: int, expires_at: int) -> Hold:
    return Hold("US-0-a", f"h{n}", 1, 0, "USD", "pending", None, expires_at, 0, 0, "", b"{}")


def test_a_slice_of_a_big_bucket_looks_only_at_the_slice() -> None:
    wheel = ExpiryWheel()
    holds = [hold(n, 5 * SECOND + n) for n in range(10_000)]  # all in the same second
    for h in holds:
        wheel.add(h)
    looked = [0]

    def live(h: Hold) -> bool:
        looked[0] += 1
        return True

    taken: list[Hold] = []
    for _ in range(20):
        looked[0] = 0
        taken += wheel.take_due(7 * SECOND, 500, live)
        assert looked[0] == 500  # not 10,000: the rest of the bucket is not visited
    assert wheel.take_due(7 * SECOND, 500, live) == []
    assert sorted(taken, key=lambda h: h.id) == sorted(holds, key=lambda h: h.id)


def test_the_lag_looks_at_a_sample_of_the_oldest_second() -> None:
    wheel = ExpiryWheel()
    for n in range(10_000):
        wheel.add(hold(n, 5 * SECOND + 200))
    looked = [0]

    def live(h: Hold) -> bool:
        looked[0] += 1
        return True

    assert wheel.oldest_due(9 * SECOND, live) == 5 * SECOND + 200
    assert looked[0] <= 1025


@settings(max_examples=200, deadline=None)
@given(
    expiries=st.lists(st.integers(0, 4 * SECOND), max_size=300),
    dead=st.sets(st.integers(0, 299)),
    now=st.integers(0, 5 * SECOND),
    limit=st.integers(1, 40),
)
def test_every_due_live_hold_comes_out_once_and_the_rest_stay(
    expiries: list[int], dead: set[int], now: int, limit: int
) -> None:
    wheel = ExpiryWheel()
    holds = [hold(n, at) for n, at in enumerate(expiries)]
    for h in holds:
        wheel.add(h)
    gone = {id(h) for n, h in enumerate(holds) if n in dead}

    def live(h: Hold) -> bool:
        return id(h) not in gone

    taken: list[Hold] = []
    while page := wheel.take_due(now, limit, live):
        assert len(page) <= limit
        taken += page
    due = [h for h in holds if id(h) not in gone and h.expires_at <= now]
    assert sorted(map(id, taken)) == sorted(map(id, due))
    # The live ones not due yet are still on the wheel: they come out once their time comes.
    later = wheel.take_due(10 * SECOND, 10**6, live)
    assert sorted(map(id, later)) == sorted(id(h) for h in holds if id(h) not in gone and h.expires_at > now)
