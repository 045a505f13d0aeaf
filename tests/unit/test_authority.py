"""The authority rules (pure): scopes, subtrees, who finishes a hold, who lifts a freeze."""

from __future__ import annotations

import pytest

from balance.domain import authority as a

# T (top) → P → C → G ; chains are the account first, then its ancestors.
T, P, C, G = "T", "P", "C", "G"
CHAIN = {T: (T,), P: (P, T), C: (C, P, T), G: (G, C, P, T)}
OTHER = ("X", "Y")  # another tree


def key(principal: str, *scopes: str) -> a.Actor:
    bits = a.parse_scopes(scopes)
    assert bits is not None
    return a.Actor(principal, bits, f"key-{principal}")


PARTNER = key(P, "read", "move")
PLATFORM = key("GW", "platform")


def test_a_partner_key_moves_and_reads_inside_its_subtree_only() -> None:
    for account in (P, C, G):
        assert a.may_move(PARTNER, CHAIN[account]) and a.may_read(PARTNER, CHAIN[account])
    for chain in (CHAIN[T], OTHER):
        assert not a.may_move(PARTNER, chain) and not a.may_read(PARTNER, chain)


def test_credits_debits_need_funds_and_limits_need_limits_strictly_above() -> None:
    assert not a.may_move_funds(PARTNER, CHAIN[P])  # the attack: credit its own account
    funded = key(P, "read", "move", "funds", "limits")
    assert a.may_move_funds(funded, CHAIN[P]) and a.may_move_funds(funded, CHAIN[G])
    assert not a.may_move_funds(funded, CHAIN[T]) and not a.may_move_funds(funded, OTHER)
    assert not a.may_set_credit_limit(PARTNER, CHAIN[C])  # the attack: a child's huge limit
    assert a.may_set_credit_limit(funded, CHAIN[C]) and not a.may_set_credit_limit(funded, CHAIN[P])
    assert a.may_move_funds(a.ADMIN_ACTOR, OTHER) and a.may_set_credit_limit(a.ADMIN_ACTOR, CHAIN[T])


def test_a_read_only_key_reads_but_moves_nothing() -> None:
    reader = key(P, "read")
    assert a.may_read(reader, CHAIN[C])
    assert not any(rule(reader, CHAIN[C]) for rule in (a.may_move, a.may_move_funds, a.may_manage_keys))


def test_a_platform_key_moves_anywhere_but_manages_no_keys_nor_limits() -> None:
    for chain in (CHAIN[T], CHAIN[G], OTHER):
        assert a.may_move(PLATFORM, chain) and a.may_read(PLATFORM, chain)
        assert not a.may_move_funds(PLATFORM, chain)
        assert not a.may_set_credit_limit(PLATFORM, chain)
        assert not a.may_manage_keys(PLATFORM, chain) and not a.may_manage_account(PLATFORM, chain)
    assert a.may_finish_hold(PLATFORM, (P, T))
    both = key("GW", "platform", "read", "move")
    assert not a.may_manage_keys(both, ("GW-child", "GW"))


def test_grantable_never_wider_than_the_creator_and_admin_only_scopes() -> None:
    assert a.grantable(PARTNER, a.READ) and a.grantable(PARTNER, a.READ | a.MOVE)
    funded = key(P, "read", "move", "funds")
    for scopes in (a.FUNDS, a.LIMITS, a.PLATFORM, a.READ | a.FUNDS):
        assert not a.grantable(funded, scopes)  # funds it has, but may not pass on
        assert a.grantable(a.ADMIN_ACTOR, scopes)
    assert not a.grantable(key(P, "read"), a.READ | a.MOVE)  # wider than itself
    assert not a.grantable(a.ADMIN_ACTOR, 0) and not a.grantable(a.ADMIN_ACTOR, 64)
    assert a.default_scopes(key(P, "move")) == a.MOVE and a.default_scopes(a.ADMIN_ACTOR) == a.PARTNER_DEFAULT


def test_scope_names_round_trip_and_unknown_names_are_refused() -> None:
    assert a.parse_scopes(["read", "platform"]) == a.READ | a.PLATFORM
    assert a.scope_names(a.ALL) == ["read", "move", "funds", "limits", "platform"]
    assert a.parse_scopes(["read", "root"]) is None


def test_who_may_finish_a_hold() -> None:
    placer_chain = CHAIN[P]  # the gateway P placed a hold on its user G
    assert a.may_finish_hold(PARTNER, placer_chain)
    assert a.may_finish_hold(key(T, "move"), placer_chain)  # an ancestor of the placer
    assert a.may_finish_hold(a.ADMIN_ACTOR, placer_chain)
    assert not a.may_finish_hold(key(G, "read", "move"), placer_chain)  # the payer's own key
    assert not a.may_finish_hold(key(C, "read", "move"), placer_chain)  # below the placer
    assert not a.may_finish_hold(key(P, "read"), placer_chain)  # the placer's read-only key
    assert not a.may_finish_hold(PARTNER, (a.ADMIN,))  # placed by the admin


def test_a_freeze_is_lifted_by_who_set_it_or_above() -> None:
    assert not a.may_change_status(key(P, "move"), CHAIN[G], a.ADMIN)  # the admin's freeze
    assert a.may_change_status(a.ADMIN_ACTOR, CHAIN[G], a.ADMIN)
    assert a.may_change_status(key(C, "move"), CHAIN[G], C)
    assert a.may_change_status(key(P, "move"), CHAIN[G], C)  # above the one who froze
    assert not a.may_change_status(key(C, "move"), CHAIN[G], P)  # below it
    assert a.may_change_status(key(C, "move"), CHAIN[G], None)  # not frozen


@pytest.mark.parametrize(("status", "power"), [("active", a.ALL), ("frozen", a.READ), ("closed", None), (None, None)])
def test_keys_follow_their_account(status: str | None, power: int | None) -> None:
    assert a.key_power(a.ALL, status) == power


def test_keys_are_managed_strictly_from_above_and_revoked_from_inside() -> None:
    assert a.may_manage_keys(PARTNER, CHAIN[C]) and not a.may_manage_keys(PARTNER, CHAIN[P])
    assert a.may_revoke_key(PARTNER, CHAIN[P]) and not a.may_revoke_key(PARTNER, CHAIN[T])
    assert a.may_list_keys(key(P, "read"), CHAIN[P]) and not a.may_list_keys(PLATFORM, CHAIN[P])


def test_chain_walks_up_to_the_top_and_stops_on_a_cycle() -> None:
    parents = {G: C, C: P, P: T}
    assert a.chain(parents.get, G) == (G, C, P, T)
    looped = {"x": "y", "y": "x"}
    assert len(a.chain(looped.get, "x")) == a.ANCESTRY_MAX
