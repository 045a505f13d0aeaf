"""Money movements on one shard: credit (from the funding account), debit (to the settlement
account) and a transfer between two accounts of the shard.

Handlers of ``Ledger.apply``. Checks in order: lookups → idempotency → shape → state →
currency → funds → overflow, then the movement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.ids import is_system_account_id, op_key_of
from balance.domain.model import CREDIT, DEBIT, KIND_FUNDING, KIND_SETTLEMENT, STATUS_ACTIVE, TRANSFER
from balance.domain.outcomes import Outcome, reject

if TYPE_CHECKING:
    from balance.domain.ledger import Ledger

_PAST_LIMIT = "the amount would take the balance past 2^62"


def credit(ledger: Ledger, cmd: c.Credit, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    key, fingerprint = (account.id, op_key_of(CREDIT, cmd.op_id)), cmd.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    if account.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts cannot be credited directly")
    if account.status != STATUS_ACTIVE:
        return ledger.refuse_recorded(
            key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"account is {account.status}", now
        )
    if account.balance + cmd.amount > limits.BALANCE_MAX:
        return ledger.refuse_recorded(key, fingerprint, cmd, account, e.LIMIT_EXCEEDED, _PAST_LIMIT, now)
    funding = ledger.system_account(account.currency, KIND_FUNDING, now)  # unbounded: stored exactly
    ledger.move(funding, account, cmd.amount, now)
    entry = ledger.entries(
        key, fingerprint, CREDIT, cmd.op_id, cmd.amount, account, funding, None, cmd.description, cmd.metadata, now
    )
    return ledger.accepted(201, key, fingerprint, entry, (account,))


def debit(ledger: Ledger, cmd: c.Debit, now: int) -> Outcome:
    account = ledger.accounts.get(cmd.account_id)
    if account is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.account_id} not found")
    key, fingerprint = (account.id, op_key_of(DEBIT, cmd.op_id)), cmd.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    if account.is_system:
        return reject(e.VALIDATION_ERROR, "system accounts cannot be debited directly")
    if account.status != STATUS_ACTIVE:
        return ledger.refuse_recorded(
            key, fingerprint, cmd, account, e.ACCOUNT_INACTIVE, f"account is {account.status}", now
        )
    if account.available < cmd.amount:
        return ledger.insufficient(key, fingerprint, cmd, account, now)
    settlement = ledger.system_account(account.currency, KIND_SETTLEMENT, now)  # unbounded: stored exactly
    ledger.move(account, settlement, cmd.amount, now)
    entry = ledger.entries(
        key,
        fingerprint,
        DEBIT,
        cmd.op_id,
        cmd.amount,
        account,
        settlement,
        None,
        cmd.description,
        cmd.metadata,
        now,
    )
    return ledger.accepted(201, key, fingerprint, entry, (account,))


def transfer(ledger: Ledger, cmd: c.Transfer, now: int) -> Outcome:
    source = ledger.accounts.get(cmd.from_account_id)
    if source is None:
        return reject(e.ACCOUNT_NOT_FOUND, f"account {cmd.from_account_id} not found")
    key, fingerprint = (source.id, op_key_of(TRANSFER, cmd.op_id)), cmd.fingerprint()
    if (early := ledger.replay(key, fingerprint)) is not None:
        return early
    if cmd.from_account_id == cmd.to_account_id:
        return reject(e.VALIDATION_ERROR, "from_account_id and to_account_id are the same")
    # By id, before the look-up: a system account created later must not turn a recorded
    # account_not_found into an unrecorded rejection for the same request.
    if source.is_system or is_system_account_id(ledger.shard, cmd.to_account_id):
        return reject(e.VALIDATION_ERROR, "system accounts cannot take part in transfers")
    target = ledger.accounts.get(cmd.to_account_id)
    if target is None:
        return ledger.refuse_recorded(
            key, fingerprint, cmd, source, e.ACCOUNT_NOT_FOUND, f"account {cmd.to_account_id} not found", now
        )
    if cmd.currency != source.currency or cmd.currency != target.currency:
        return ledger.refuse_recorded(
            key,
            fingerprint,
            cmd,
            source,
            e.CURRENCY_MISMATCH,
            f"{cmd.currency} transfer between {source.currency} and {target.currency} accounts",
            now,
        )
    for account in (source, target):
        if account.status != STATUS_ACTIVE:
            return ledger.refuse_recorded(
                key, fingerprint, cmd, source, e.ACCOUNT_INACTIVE, f"account {account.id} is {account.status}", now
            )
    if source.available < cmd.amount:
        return ledger.insufficient(key, fingerprint, cmd, source, now)
    if target.balance + cmd.amount > limits.BALANCE_MAX:
        return ledger.refuse_recorded(key, fingerprint, cmd, source, e.LIMIT_EXCEEDED, _PAST_LIMIT, now)
    ledger.move(source, target, cmd.amount, now)
    entry = ledger.entries(
        key, fingerprint, TRANSFER, cmd.op_id, cmd.amount, source, target, None, cmd.description, cmd.metadata, now
    )
    return ledger.accepted(201, key, fingerprint, entry, (source, target))
