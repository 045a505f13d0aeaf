"""Account rules: create an account, change one (status, name, limit, metadata), give it an API key.

Who may change what (``authority``) is checked here, first: the ledger knows the account's
ancestors and who froze it.

Handlers of ``Ledger.apply``: each takes the ledger, the command and ``now``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.ids import ACCOUNT_OP_KIND, op_key_of
from balance.domain.model import (
    EVENT_ACCOUNT_CREATED,
    EVENT_ACCOUNT_REPLENISHED,
    EVENT_ACCOUNT_UPDATED,
    KIND_FUNDING,
    KIND_SETTLEMENT,
    OPEN,
    REGIONS,
    STATUS_ACTIVE,
    STATUS_CLOSED,
    STATUS_FROZEN,
    Account,
    Entry,
    Event,
    principal,
)
from balance.domain.outcomes import Outcome, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger


def create_account(ledger: Ledger, cmd: c.CreateAccount, now: int) -> Outcome:
    key = fingerprint = None
    if cmd.client_id is not None:  # a retry answers the first creation (its id is derived: ``ids``)
        key, fingerprint = (cmd.account_id, op_key_of(ACCOUNT_OP_KIND, cmd.client_id)), cmd.fingerprint()
        if (early := ledger.replay(key, fingerprint)) is not None:
            return early
        suffix = cmd.account_id.rpartition("-")[2]
        shard = cmd.account_id.split("-")[1]
        if cmd.account_id in ledger.accounts or any(f"{r}-{shard}-{suffix}" in ledger.accounts for r in REGIONS):
            return reject(e.IDEMPOTENCY_CONFLICT, f"account id {cmd.client_id} was already used with a different body")
    if cmd.account_id in ledger.accounts:
        return reject(e.VALIDATION_ERROR, f"account {cmd.account_id} exists")
    if cmd.parent_id is not None:
        parent = ledger.accounts.get(cmd.parent_id)
        if parent is None:
            return reject(e.ACCOUNT_NOT_FOUND, f"parent account {cmd.parent_id} not found")
        if parent.is_system:
            return reject(e.VALIDATION_ERROR, "a system account cannot have children")
        if parent.status == STATUS_CLOSED:
            return reject(e.ACCOUNT_INACTIVE, f"parent account {cmd.parent_id} is closed")
    if cmd.credit_limit < 0:
        return reject(e.VALIDATION_ERROR, "credit_limit out of range")
    if cmd.credit_limit > limits.CREDIT_LIMIT_MAX:
        return reject(e.LIMIT_EXCEEDED, "credit_limit is past 2^62")
    ledger.system_account(cmd.currency, KIND_FUNDING, now)
    ledger.system_account(cmd.currency, KIND_SETTLEMENT, now)
    account = Account(
        cmd.account_id, cmd.parent_id, cmd.kind, cmd.region, cmd.currency, cmd.name,
        STATUS_ACTIVE, 0, 0, cmd.credit_limit, False, 1, now, now, cmd.metadata,
    )  # fmt: skip
    ledger.undo_accounts[account.id] = None  # created: its row is written with the batch
    ledger.accounts[account.id] = account
    ledger.changes.events.append(Event(EVENT_ACCOUNT_CREATED, account.id, account.version, now, account.state()))
    if key is None or fingerprint is None or cmd.client_id is None:
        return Outcome(201, accounts=(account,))
    # Under a client id, a journal row keeps the first answer (as a money operation's does); the
    # history does not list it (``schema.HISTORY_HIDDEN_KINDS``).
    entry = Entry(
        ledger.event_seq(), account.id, key[1], OPEN, cmd.client_id, 201, "", fingerprint, 0, account.currency,
        None, None, 0, 0, account.version, now, "", b"{}",
    )  # fmt: skip
    ledger.changes.entries.append(entry)
    return ledger.accepted(201, key, fingerprint, entry, (account,))


def update_account(ledger: Ledger, cmd: c.UpdateAccount, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    if account.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts cannot be changed")
    actor = cmd.actor
    chain = ledger.chain(account.id)
    if not a.may_manage_account(actor, chain):
        return reject(e.FORBIDDEN, "only an ancestor's key or the admin key may change this account")
    if cmd.credit_limit is not None and cmd.credit_limit != account.credit_limit:
        if not a.may_set_credit_limit(actor, chain):
            return reject(e.FORBIDDEN, "credit limits need a key with the limits scope above the account")
    if cmd.status is not None and cmd.status != account.status:
        if not a.may_change_status(actor, chain, account.frozen_by):
            return reject(e.FORBIDDEN, f"the freeze was set by {account.frozen_by}; only it or above may lift it")
    if account.status == STATUS_CLOSED:
        return reject(e.ACCOUNT_INACTIVE, "a closed account cannot be changed")
    if cmd.status == STATUS_CLOSED and ledger.remote_marks_unknown:
        return reject(e.UNAVAILABLE, "holds of other nodes naming accounts of this shard are being counted; retry")
    if cmd.status == STATUS_CLOSED and (why := ledger.closing_refusal(account)) is not None:
        return reject(e.ACCOUNT_NOT_EMPTY, f"account {account.id} cannot be closed: {why}")
    credit_limit = account.credit_limit if cmd.credit_limit is None else cmd.credit_limit
    if credit_limit < 0:
        return reject(e.VALIDATION_ERROR, "credit_limit out of range")
    if credit_limit > limits.CREDIT_LIMIT_MAX:
        return reject(e.LIMIT_EXCEEDED, "credit_limit is past 2^62")
    if account.balance + credit_limit - account.reserved < 0:
        return reject(e.VALIDATION_ERROR, "credit_limit is below what the account already uses")
    previous = account.state()  # as this update found it (the batch's undo snapshot may be older)
    ledger.touch(account)
    ledger.frames[-1].rewritten.add(account.id)  # no journal row says what changed: write the row
    if cmd.status is not None and cmd.status != account.status:
        account.status = cmd.status
        account.frozen_by = principal(actor.principal) if cmd.status == STATUS_FROZEN else None
    if cmd.name is not None:
        account.name = cmd.name
    if cmd.metadata is not None:
        account.metadata = cmd.metadata
    limit_changed = credit_limit != account.credit_limit
    account.credit_limit = credit_limit
    account.version += 1
    account.updated_at = now
    replenished = limit_changed and account.exhausted  # what it may spend changed: the flag lifts
    account.exhausted = account.exhausted and not replenished
    state = account.state()
    ledger.changes.events.append(Event(EVENT_ACCOUNT_UPDATED, account.id, account.version, now, state, previous))
    if replenished:
        ledger.changes.events.append(Event(EVENT_ACCOUNT_REPLENISHED, account.id, account.version, now, state))
    return Outcome(200, accounts=(account,))


def create_key(ledger: Ledger, cmd: c.CreateKey, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None or account.is_system:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    if account.status == STATUS_CLOSED:  # its keys have no power: a new one would have none
        return reject(e.ACCOUNT_INACTIVE, "a closed account gets no keys")
    ledger.changes.keys.append(
        (cmd.key_hash, cmd.account_id, cmd.created_at or now, cmd.key_id, cmd.prefix, cmd.scopes, None, cmd.client_id)
    )
    return Outcome(201, accounts=(account,))


def revoke_key(ledger: Ledger, cmd: c.RevokeKey, now: int) -> Outcome:
    """The key's row again, with its revocation time (also for a closed account's key)."""
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    ledger.changes.keys.append(cmd.row)
    return Outcome(200, accounts=(account,))
