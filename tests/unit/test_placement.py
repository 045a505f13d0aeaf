"""Where accounts live (``balance.shards.Placement``): the shard an id names, if it exists."""

from __future__ import annotations

from balance.shards import Placement


def test_an_id_is_placed_on_the_shard_it_names_if_the_deployment_has_it() -> None:
    placement = Placement(2)
    assert placement.shard_of("EU-0-9f2c") == 0
    assert placement.shard_of("US-1-9f2c") == 1
    assert placement.shard_of("US-2-9f2c") is None  # a shard this deployment does not have
    assert placement.shard_of("US-²-9f2c") is None
    assert placement.shard_of("SYS-1-funding-EUR") == 1
    assert placement.shard_of("ghost") is None


def test_a_new_top_level_account_goes_to_the_least_filled_shard() -> None:
    assert Placement(3).new_top_level([5, 2, 9]) == 1
    assert Placement(2).new_top_level([4, 4]) == 0


def test_an_override_places_an_account_elsewhere_than_its_id_says() -> None:
    """The directory's overrides come first (one dict get), removals bring the id back."""
    placement = Placement(3)
    placement.override([("US-0-partner", 2), ("US-0-child", 2), ("US-1-x", 9)])
    assert placement.shard_of("US-0-partner") == 2
    assert placement.shard_of("US-0-child") == 2
    assert placement.shard_of("US-0-other") == 0  # not moved: its id says
    assert placement.shard_of("US-1-x") is None  # a shard this deployment does not have
    placement.override([("US-0-child", None), ("US-0-partner", 1), ("US-0-never", None)])
    assert placement.shard_of("US-0-child") == 0
    assert placement.shard_of("US-0-partner") == 1
    assert placement.overrides == {"US-0-partner": 1, "US-1-x": 9}
