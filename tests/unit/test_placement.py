"""Where accounts live (``balance.shards.Placement``): the shard an id names, if it exists."""

from __future__ import annotations

from balance.domain.ids import client_account_suffix
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


def test_a_creation_retried_after_its_account_moved_is_found_by_its_first_id() -> None:
    """The id of a creation under a client id, as its first try made it, when that account
    has an override: a top-level one's names the shard its client id hashes to, a child's
    the shard its parent's id names."""
    placement = Placement(4)
    top = client_account_suffix(None, "c1")
    top_id = f"EU-{int(top, 16) % 4}-{top}"
    child = client_account_suffix("US-2-parent", "k1")
    assert placement.created_before("EU", None, top) is None  # no override: the usual id
    placement.override([(top_id, 3), (f"US-2-{child}", 1)])
    assert placement.created_before("EU", None, top) == top_id
    assert placement.created_before("US", None, top) is None  # another region: another id
    assert placement.created_before("US", "US-2-parent", child) == f"US-2-{child}"
    assert placement.created_before("US", "US-1-other", child) is None
    assert placement.created_before("US", "ghost", child) is None
