"""Who may do what: the scopes of an API key and the rules that read them. Pure (no IO).

An ``Actor`` is who sends a request: the principal (the account a key belongs to, or
``ADMIN``), the key's scopes as a bitmask, and the key's id. Rules about an account take its
``chain``: the account id first, then its ancestors up to the top-level account (``chain``
builds it), so "inside the key's subtree" is ``principal in chain``.

Scopes (a key never gets more than the key that creates it):
  read      read accounts, holds and history inside the key's subtree;
  move      transfers, holds, captures and releases inside the subtree; open child
            accounts, freeze/close/rename them, manage their keys (a partner key's default);
  funds     credits and debits (money crossing the platform's boundary), inside the subtree;
  limits    credit limits of accounts strictly below the key's account;
  platform  the gateway's backend: holds, captures, releases, transfers and reads between ANY
            accounts, never keys or limits.
``funds``, ``limits`` and ``platform`` are granted by the admin only. The admin has all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

ADMIN: Final = "admin"

READ: Final = 1
MOVE: Final = 2
FUNDS: Final = 4
LIMITS: Final = 8
PLATFORM: Final = 16
ALL: Final = 31
ADMIN_ONLY: Final = 28  # FUNDS | LIMITS | PLATFORM: only the admin grants these
PARTNER_DEFAULT: Final = 3  # READ | MOVE

SCOPE_NAMES = {"read": READ, "move": MOVE, "funds": FUNDS, "limits": LIMITS, "platform": PLATFORM}

ANCESTRY_MAX: Final = 64  # trees are shallow; the bound guards against a cycle


class Actor:
    """Who acts: the key's principal (account id or ``ADMIN``), its scopes and its id."""

    __slots__ = ("principal", "scopes", "key_id")

    def __init__(self, principal: str, scopes: int, key_id: str) -> None:
        self.principal = principal
        self.scopes = scopes
        self.key_id = key_id

    @property
    def is_admin(self) -> bool:
        return self.principal == ADMIN

    def has(self, scope: int) -> bool:
        return (self.scopes & scope) == scope

    def __repr__(self) -> str:
        return f"Actor({self.principal!r}, {scope_names(self.scopes)}, {self.key_id!r})"


ADMIN_ACTOR: Final = Actor(ADMIN, ALL, ADMIN)
NOBODY: Final = Actor("", 0, "")  # before authentication: may do nothing


def parse_scopes(names: Iterable[str]) -> int | None:
    """The bitmask of scope names, or None if one is unknown."""
    bits = 0
    for name in names:
        bit = SCOPE_NAMES.get(name)
        if bit is None:
            return None
        bits |= bit
    return bits


def scope_names(bits: int) -> list[str]:
    return [name for name, bit in SCOPE_NAMES.items() if bits & bit]


def chain(parent_of: Callable[[str], str | None], account_id: str) -> tuple[str, ...]:
    """``account_id`` and its ancestors, nearest first (``parent_of`` answers None at the top)."""
    found = [account_id]
    parent = parent_of(account_id)
    while parent is not None and len(found) < ANCESTRY_MAX:
        found.append(parent)
        parent = parent_of(parent)
    return tuple(found)


def key_power(scopes: int, account_status: str | None) -> int | None:
    """What a key may still do given its account's status: all its scopes while active, reads
    only while frozen, nothing once closed or gone (None: the key no longer authenticates)."""
    if account_status == "active":
        return scopes
    if account_status == "frozen":
        return scopes & READ
    return None


def _inside(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    return actor.principal in account_chain


def _strictly_above(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    return actor.principal in account_chain[1:]


def may_read(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    if actor.is_admin or actor.has(PLATFORM):
        return True
    return actor.has(READ) and _inside(actor, account_chain)


def may_move(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    """Transfers, holds, captures and releases touching this account (each end is checked)."""
    if actor.is_admin or actor.has(PLATFORM):
        return True
    return actor.has(MOVE) and _inside(actor, account_chain)


def may_move_funds(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    """Credits and debits: money in from or out to the world outside the platform."""
    return actor.is_admin or (actor.has(FUNDS) and _inside(actor, account_chain))


def may_set_credit_limit(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    """Nobody raises their own limit: only a ``limits`` key strictly above, or the admin."""
    return actor.is_admin or (actor.has(LIMITS) and _strictly_above(actor, account_chain))


def may_open_child(actor: Actor, parent_chain: tuple[str, ...]) -> bool:
    return actor.is_admin or (actor.has(MOVE) and _inside(actor, parent_chain))


def may_manage_account(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    """Status, name, metadata of an account strictly below the key's (not the key's own)."""
    return actor.is_admin or (actor.has(MOVE) and _strictly_above(actor, account_chain))


def may_manage_keys(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    """Create keys for an account strictly below; platform keys never manage keys."""
    if actor.is_admin:
        return True
    return actor.has(MOVE) and not actor.has(PLATFORM) and _strictly_above(actor, account_chain)


def may_list_keys(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    return actor.is_admin or (actor.has(READ) and not actor.has(PLATFORM) and _inside(actor, account_chain))


def may_revoke_key(actor: Actor, account_chain: tuple[str, ...]) -> bool:
    """Revoking is the safe direction: a key may also revoke its own account's keys."""
    if actor.is_admin:
        return True
    return actor.has(MOVE) and not actor.has(PLATFORM) and _inside(actor, account_chain)


def grantable(actor: Actor, scopes: int) -> bool:
    """A new key is never wider than its creator, and only the admin grants funds, limits, platform."""
    if scopes == 0 or scopes & ~ALL:
        return False
    if actor.is_admin:
        return True
    return (scopes & ~actor.scopes) == 0 and (scopes & ADMIN_ONLY) == 0


def default_scopes(actor: Actor) -> int:
    """A new key's scopes when none are asked: a partner key's (read and move), at most the creator's."""
    return PARTNER_DEFAULT if actor.is_admin else PARTNER_DEFAULT & actor.scopes


def may_finish_hold(actor: Actor, placer_chain: tuple[str, ...]) -> bool:
    """Capture or release: whoever placed the hold, one of its ancestors, a platform key, or
    the admin. (The payer's own key may not release or under-capture a gateway's hold.)
    ``placer_chain``: the placer's principal, then its ancestors."""
    if actor.is_admin or actor.has(PLATFORM):
        return True
    return actor.has(MOVE) and actor.principal in placer_chain


def may_change_status(actor: Actor, account_chain: tuple[str, ...], frozen_by: str | None) -> bool:
    """A freeze is lifted (or the frozen account's status changed) only by who set it, one of
    its ancestors, or the admin: a partner cannot lift the admin's freeze."""
    if actor.is_admin or frozen_by is None:
        return True
    if frozen_by == ADMIN or frozen_by not in account_chain or actor.principal not in account_chain:
        return False
    return account_chain.index(actor.principal) >= account_chain.index(frozen_by)
