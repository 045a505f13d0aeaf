"""Account rules: create an account, change one (status, name, limit, metadata), give it an API key.

Handlers of ``Ledger.apply``: each takes the ledger, the command and ``now``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.model import KIND_FUNDING, KIND_SETTLEMENT, STATUS_ACTIVE, STATUS_CLOSED, Account, Event
from balance.domain.outcomes import Outcome, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger


def create_account(ledger: Ledger, cmd: c.CreateAccount, now: int) -> Outcome:
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
    return Outcome(201, accounts=(account,))


def update_account(ledger: Ledger, cmd: c.UpdateAccount, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    if account.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts cannot be changed")
    if account.status == STATUS_CLOSED:
        return reject(e.ACCOUNT_INACTIVE, "a closed account cannot be changed")
    if cmd.status == STATUS_CLOSED and (why := ledger.closing_refusal(account)) is not None:
        return reject(e.ACCOUNT_NOT_EMPTY, f"account {account.id} cannot be closed: {why}")
    credit_limit = account.credit_limit if cmd.credit_limit is None else cmd.credit_limit
    if credit_limit < 0:
        return reject(e.VALIDATION_ERROR, "credit_limit out of range")
    if credit_limit > limits.CREDIT_LIMIT_MAX:
        return reject(e.LIMIT_EXCEEDED, "credit_limit is past 2^62")
    if account.balance + credit_limit - account.reserved < 0:
        return reject(e.VALIDATION_ERROR, "credit_limit is below what the account already uses")
    ledger.touch(account)
    ledger.frames[-1].rewritten.add(account.id)  # no journal row says what changed: write the row
    if cmd.status is not None:
        account.status = cmd.status
    if cmd.name is not None:
        account.name = cmd.name
    if cmd.metadata is not None:
        account.metadata = cmd.metadata
    limit_changed = credit_limit != account.credit_limit
    account.credit_limit = credit_limit
    account.version += 1
    account.updated_at = now
    if limit_changed and account.exhausted:  # what it may spend changed: the flag lifts
        account.exhausted = False
        ledger.changes.events.append(Event("account_replenished", account.id, account.version, now))
    return Outcome(200, accounts=(account,))


def create_key(ledger: Ledger, cmd: c.CreateKey, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None or account.is_system:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    ledger.changes.keys.append((cmd.key_hash, cmd.account_id, now))
    return Outcome(201, accounts=(account,))
