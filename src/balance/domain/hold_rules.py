"""Holds: place one (money set aside), capture it (moved to its destination or settlement),
release it, or expire it (the sweep, or a capture or release that finds it past its expiry).

Handlers of ``Ledger.apply``; ``_settling`` holds the checks a capture and a release share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS, capture_leg_id, start_leg
from balance.domain.ids import is_system_account_id, op_key_of
from balance.domain.model import (
    CAPTURE,
    EVENT_ACCOUNT_EXHAUSTED,
    EVENT_HOLD_RESULT_CONFLICT,
    EXPIRE,
    HOLD,
    HOLD_CAPTURED,
    HOLD_EXPIRED,
    HOLD_PENDING,
    HOLD_RELEASED,
    KIND_SETTLEMENT,
    KIND_TRANSIT,
    RELEASE,
    STATUS_ACTIVE,
    STATUS_CLOSED,
    Account,
    Entry,
    Event,
    Hold,
)
from balance.domain.outcomes import Outcome, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger


def place_hold(ledger: Ledger, cmd: c.PlaceHold, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    key, fingerprint = (account.id, op_key_of(HOLD, cmd.op_id)), cmd.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    if ledger.holds.find(account.id, cmd.op_id) is not None:  # its outcome was not found: never place twice
        return reject(e.IDEMPOTENCY_CONFLICT, f"hold {cmd.op_id} exists")
    if account.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts cannot hold money")
    if not limits.EXPIRES_IN_S_MIN <= cmd.expires_in_s <= limits.EXPIRES_IN_S_MAX:
        return reject(e.VALIDATION_ERROR, "expires_in_s out of range")
    # Shape before state: a rejection that is not recorded must not follow one that is, or a
    # re-sent request whose recorded outcome is not in memory (after a restart) would be
    # answered this rejection instead of its first outcome.
    destination_id, remote = cmd.destination_account_id, cmd.remote_destination
    if destination_id == account.id:
        return reject(e.VALIDATION_ERROR, "destination_account_id is the holding account")
    if destination_id is not None and (
        is_system_account_id(ledger.shard, destination_id) or (remote is not None and remote.is_system)
    ):
        return reject(e.VALIDATION_ERROR, "a system account cannot be a destination")
    # An account that moved away (its row stays here, ``moved``) is named as on another shard.
    destination = (
        None if destination_id is None or not ledger.lives_here(destination_id) else ledger.accounts[destination_id]
    )
    if account.status != STATUS_ACTIVE:
        return ledger.refuse_recorded(
            key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"account is {account.status}", now
        )
    if destination is None and remote is not None and remote.found:  # on another shard: as read there
        if remote.currency != account.currency:
            return ledger.refuse_recorded(
                key, fingerprint, cmd, account, e.CURRENCY_MISMATCH, f"destination is in {remote.currency}", now
            )
        if remote.status != STATUS_ACTIVE:
            return ledger.refuse_recorded(
                key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"destination is {remote.status}", now
            )
    elif destination_id is not None:
        if destination is None:
            return ledger.refuse_recorded(
                key,
                fingerprint,
                cmd,
                account,
                e.ACCOUNT_NOT_FOUND,
                f"account {cmd.destination_account_id} not found",
                now,
            )
        if destination.currency != account.currency:
            return ledger.refuse_recorded(
                key,
                fingerprint,
                cmd,
                account,
                e.CURRENCY_MISMATCH,
                f"destination is in {destination.currency}",
                now,
            )
        if destination.status != STATUS_ACTIVE:
            return ledger.refuse_recorded(
                key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"destination is {destination.status}", now
            )
    if account.exhausted:
        return ledger.refuse_recorded(key, fingerprint, cmd, account, e.INSUFFICIENT_FUNDS, "account is exhausted", now)
    if account.available < cmd.amount:
        return ledger.insufficient(key, fingerprint, cmd, account, now)
    if account.reserved + cmd.amount > limits.BALANCE_MAX:
        return ledger.refuse_recorded(
            key, fingerprint, cmd, account, e.LIMIT_EXCEEDED, "the amount would take the reserve past 2^62", now
        )
    ledger.touch(account)
    account.reserved += cmd.amount
    ledger.changed(account, now)
    if account.available <= 0:
        account.exhausted = True
        ledger.changes.events.append(Event(EVENT_ACCOUNT_EXHAUSTED, account.id, account.version, now, account.state()))
    expires_at = now + cmd.expires_in_s * 1_000_000
    hold = Hold(
        account.id, cmd.op_id, cmd.amount, 0, account.currency, HOLD_PENDING,
        cmd.destination_account_id, expires_at, now, now, cmd.description, cmd.metadata, cmd.actor.principal,
    )  # fmt: skip
    ledger.undo_holds[(account.id, hold.id)] = None
    ledger.holds.put(hold)
    ledger.unsaved[hold] = False  # no row of it anywhere but the journal yet
    ledger.expiry.add(hold)
    if destination_id is not None:  # closing it waits for this hold (on another shard: once told)
        ledger.count_inbound_hold(hold, True)
    entry = ledger.entries(
        key, fingerprint, HOLD, cmd.op_id, cmd.amount, account, None, hold.id, cmd.description, cmd.metadata, now
    )
    entry.expires_at, entry.destination_account_id = expires_at, cmd.destination_account_id
    entry.placed_by = hold.placed_by
    outcome = ledger.accepted(201, key, fingerprint, entry, (account,))
    outcome.hold = hold
    return outcome


def _settling(
    ledger: Ledger, cmd: c.CaptureHold | c.ReleaseHold, kind: str, now: int
) -> Outcome | tuple[Account, tuple[str, str], int, Hold]:
    """The checks a capture and a release share: lookups, authority, replay, the hold still pending.

    Authority comes before the replay (a key that may not finish the hold learns nothing of
    how it was finished). A hold past its expiry that no sweep has reached yet is expired here.
    """
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    hold = ledger.holds.find(account.id, cmd.hold_id)
    if hold is not None and not a.may_finish_hold(cmd.actor, placer_chain(ledger, hold)):
        return reject(e.FORBIDDEN, f"only the key that placed hold {hold.id} (or above it) may finish it")
    key, fingerprint = (account.id, op_key_of(kind, cmd.hold_id)), cmd.fingerprint()
    if (early := ledger.replay(key, fingerprint, conflict=e.HOLD_NOT_PENDING)) is not None:
        return early
    if hold is None:
        return reject(e.HOLD_NOT_FOUND, f"hold {cmd.hold_id} not found")
    if hold.status == HOLD_PENDING and hold.expires_at <= now:
        _expire(ledger, hold, now)
    if hold.status != HOLD_PENDING:
        return reject(e.HOLD_NOT_PENDING, f"hold is {hold.status}")
    return account, key, fingerprint, hold


def placer_chain(ledger: Ledger, hold: Hold) -> tuple[str, ...]:
    """Who placed the hold and its ancestors. A hold placed before placers were recorded counts
    as placed by the top of its account's tree (the partner that runs it)."""
    placer = hold.placed_by
    if placer is None:
        return ledger.chain(hold.account_id)[-1:]
    if placer == a.ADMIN:
        return (placer,)
    return ledger.chain(placer)  # a placer on another shard (a platform key's account): itself only


def capture_hold(ledger: Ledger, cmd: c.CaptureHold, now: int) -> Outcome:
    checked = _settling(ledger, cmd, CAPTURE, now)
    if isinstance(checked, Outcome):
        return checked
    account, key, fingerprint, hold = checked
    amount = hold.amount if cmd.amount is None else cmd.amount
    if amount < limits.AMOUNT_MIN:
        return reject(e.VALIDATION_ERROR, "amount must be at least 1")
    if amount > hold.amount:
        return reject(e.AMOUNT_EXCEEDS_HOLD, f"amount {amount} > hold amount {hold.amount}")
    destination_id = hold.destination_account_id
    status = 200
    if destination_id is None:
        target = ledger.system_account(account.currency, KIND_SETTLEMENT, now)  # unbounded: stored exactly
    elif ledger.lives_here(destination_id):
        target = ledger.accounts[destination_id]
        if target.status == STATUS_CLOSED:  # cannot be: closing waits for the holds naming it
            return reject(e.ACCOUNT_INACTIVE, f"destination {target.id} is closed")
        if target.balance + amount > limits.BALANCE_MAX:
            return reject(e.LIMIT_EXCEEDED, "the amount would take the destination's balance past 2^62")
        ledger.count_inbound_hold(hold, False)
    else:  # on another shard (or moved there): into transit, and on (``cross_shard``); the leg's mark replaces the hold's
        target = ledger.system_account(account.currency, KIND_TRANSIT, now)
        status = TRANSFER_IN_PROGRESS
        ledger.count_inbound_hold(hold, False)
    ledger.touch_hold(hold)
    ledger.touch(account)
    account.reserved -= hold.amount
    hold.status, hold.captured_amount, hold.updated_at = HOLD_CAPTURED, amount, now
    ledger.move(account, target, amount, now)
    entry = ledger.entries(
        key, fingerprint, CAPTURE, hold.id, amount, account, target, hold.id, hold.description, hold.metadata, now
    )
    if status == TRANSFER_IN_PROGRESS:
        assert destination_id is not None
        entry.counterparty_account_id = destination_id  # the real counterparty, on its own shard
        leg = capture_leg_id(hold.id)
        start_leg(
            ledger, account.id, leg, destination_id, amount, account.currency, hold.description, hold.metadata, now
        )
    outcome = ledger.accepted(status, key, fingerprint, entry, (account,))
    outcome.hold = hold
    return outcome


def release_hold(ledger: Ledger, cmd: c.ReleaseHold, now: int) -> Outcome:
    checked = _settling(ledger, cmd, RELEASE, now)
    if isinstance(checked, Outcome):
        return checked
    account, key, fingerprint, hold = checked
    ledger.touch_hold(hold)
    ledger.touch(account)
    account.reserved -= hold.amount
    hold.status, hold.updated_at = HOLD_RELEASED, now
    ledger.count_inbound_hold(hold, False)
    ledger.changed(account, now)
    entry = ledger.entries(
        key,
        fingerprint,
        RELEASE,
        hold.id,
        hold.amount,
        account,
        None,
        hold.id,
        hold.description,
        hold.metadata,
        now,
    )
    outcome = ledger.accepted(200, key, fingerprint, entry, (account,))
    outcome.hold = hold
    return outcome


def record_result_conflict(ledger: Ledger, cmd: c.RecordResultConflict, now: int) -> Outcome:
    """Only a hold that can no longer move money (expired or released) makes a conflict: its
    event carries the account as it stands (the version unchanged: nothing changed)."""
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    if len(cmd.hold) <= 5 or cmd.hold[1] != cmd.hold_id or cmd.hold[5] not in (HOLD_EXPIRED, HOLD_RELEASED):
        return reject(e.HOLD_NOT_PENDING, f"hold {cmd.hold_id} is neither expired nor released")
    event = Event(
        EVENT_HOLD_RESULT_CONFLICT, account.id, account.version, now, account.state(), hold=cmd.hold, result=cmd.result
    )
    ledger.changes.events.append(event)
    return Outcome(200)


def expire_hold(ledger: Ledger, cmd: c.ExpireHold, now: int) -> Outcome:
    hold = ledger.holds.find(cmd.account_id, cmd.hold_id)
    if hold is None or hold.status != HOLD_PENDING or hold.expires_at > now:
        return reject(e.HOLD_NOT_PENDING, "nothing to expire")
    entry = _expire(ledger, hold, now)
    return Outcome(200, entry=entry, accounts=(ledger.accounts[hold.account_id],), hold=hold)


def _expire(ledger: Ledger, hold: Hold, now: int) -> Entry:
    account = ledger.accounts[hold.account_id]
    ledger.touch_hold(hold)
    ledger.touch(account)
    account.reserved -= hold.amount
    hold.status, hold.updated_at = HOLD_EXPIRED, now
    ledger.count_inbound_hold(hold, False)
    ledger.changed(account, now)
    key = (account.id, op_key_of(EXPIRE, hold.id))
    return ledger.entries(
        key, 0, EXPIRE, hold.id, hold.amount, account, None, hold.id, hold.description, hold.metadata, now
    )
