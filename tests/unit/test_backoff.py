"""The retry pacing while storage is away: capped, growing, jittered."""

from __future__ import annotations

import random

import pytest

from balance.engine.recovery import Backoff


def test_waits_grow_from_the_first_to_the_cap_each_between_half_and_all_of_its_ceiling() -> None:
    backoff = Backoff(0.1, 5.0, rng=random.Random(7))
    for attempt in range(1, 40):
        ceiling = min(5.0, 0.1 * 2 ** (attempt - 1))
        delay = backoff.delay(attempt)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay)
    assert max(backoff.delay(n) for n in range(30, 60)) <= 5.0


def test_the_jitter_spreads_shards_that_failed_together() -> None:
    delays = {Backoff(0.1, 5.0, rng=random.Random(seed)).delay(8) for seed in range(20)}
    assert len(delays) == 20 and max(delays) - min(delays) > 0.5


def test_a_huge_attempt_number_still_gives_the_cap() -> None:
    assert 2.5 <= Backoff(0.1, 5.0).delay(10_000) <= 5.0


@pytest.mark.parametrize(("first", "cap"), [(0, 1), (2, 1), (-1, 5)])
def test_nonsense_settings_are_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(first, cap)
