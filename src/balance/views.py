"""The public shapes of accounts, holds, transactions and problems, and their JSON encoding.

An answer is encoded once, right after its operation is applied: the same bytes go to the
caller and into the journal (``result``), so a replay answers exactly the first body.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from balance.domain.errors import Rejection
from balance.domain.model import Account, Entry, Hold

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
encoder = msgspec.json.Encoder()


_TIMESTAMPS: dict[int, str] = {}  # a batch stamps all its rows with one ``now``: format it once


def timestamp(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC (integer arithmetic, no float)."""
    text = _TIMESTAMPS.get(us)
    if text is None:
        if len(_TIMESTAMPS) > 4096:
            _TIMESTAMPS.clear()
        text = (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z")
        _TIMESTAMPS[us] = text
    return text


class AccountView(msgspec.Struct, omit_defaults=False):
    id: str
    parent_id: str | None
    kind: str
    region: str
    currency: str
    name: str
    status: str
    balance: int
    reserved: int
    available: int
    credit_limit: int
    exhausted: bool
    version: int
    created_at: str
    updated_at: str
    metadata: dict[str, Any]


class HoldView(msgspec.Struct):
    id: str
    account_id: str
    amount: int
    captured_amount: int
    currency: str
    status: str
    destination_account_id: str | None
    expires_at: str
    created_at: str
    updated_at: str
    description: str
    metadata: dict[str, Any]


class TxnView(msgspec.Struct):
    id: str
    kind: str
    account_id: str
    counterparty_account_id: str | None
    amount: int
    currency: str
    hold_id: str | None
    balance_after: int
    reserved_after: int
    version: int
    created_at: str
    description: str
    metadata: dict[str, Any]


class Problem(msgspec.Struct):
    type: str
    title: str
    status: int
    detail: str
    code: str


class AccountReply(msgspec.Struct):
    transaction: TxnView
    account: AccountView


class TransferReply(msgspec.Struct):
    transaction: TxnView
    accounts: list[AccountView]


class HoldReply(msgspec.Struct):
    hold: HoldView
    account: AccountView


class KeyReply(msgspec.Struct):
    key: str
    account_id: str


def account_view(state: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    """An account state tuple (Account.__slots__ order) as its public shape."""
    (id_, parent_id, kind, region, currency, name, status, balance, reserved, credit_limit,
     exhausted, version, created_at, updated_at, metadata) = state  # fmt: skip
    return {
        "id": id_, "parent_id": parent_id, "kind": kind, "region": region, "currency": currency,
        "name": name, "status": status, "balance": balance, "reserved": reserved,
        "available": balance + credit_limit - reserved, "credit_limit": credit_limit,
        "exhausted": bool(exhausted), "version": version, "created_at": timestamp(created_at),
        "updated_at": timestamp(updated_at), "metadata": msgspec.Raw(metadata),
    }  # fmt: skip


def hold_view(state: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    (account_id, id_, amount, captured, currency, status, destination, expires_at, created_at,
     updated_at, description, metadata) = state  # fmt: skip
    return {
        "id": id_, "account_id": account_id, "amount": amount, "captured_amount": captured,
        "currency": currency, "status": status, "destination_account_id": destination,
        "expires_at": timestamp(expires_at), "created_at": timestamp(created_at),
        "updated_at": timestamp(updated_at), "description": description,
        "metadata": msgspec.Raw(metadata),
    }  # fmt: skip


def txn_view(row: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    """A journal row (schema.JOURNAL_COLUMNS order) as a Txn."""
    (_seq, account_id, _op_key, kind, op_id, _status, _code, _fp, amount, currency, counterparty,
     hold_id, balance_after, reserved_after, version, created_at, description, metadata, _result) = row  # fmt: skip
    return {
        "id": op_id, "kind": kind, "account_id": account_id, "counterparty_account_id": counterparty,
        "amount": amount, "currency": currency, "hold_id": hold_id, "balance_after": balance_after,
        "reserved_after": reserved_after, "version": version, "created_at": timestamp(created_at),
        "description": description, "metadata": msgspec.Raw(metadata),
    }  # fmt: skip


def encode_account(account: Account) -> bytes:
    return encoder.encode(account_view(account.state()))


def encode_money_reply(entry: Entry, accounts: tuple[Account, ...], hold: Hold | None) -> bytes:
    """The answer of a successful money operation, from the live objects right after it."""
    if hold is not None:
        return encoder.encode({"hold": hold_view(hold.state()), "account": account_view(accounts[0].state())})
    txn = txn_view(entry.row())
    if len(accounts) == 2:
        return encoder.encode({"transaction": txn, "accounts": [account_view(a.state()) for a in accounts]})
    return encoder.encode({"transaction": txn, "account": account_view(accounts[0].state())})


def problem(code: str, status: int, detail: str, title: str | None = None) -> bytes:
    return encoder.encode(
        {
            "type": f"urn:balance:problem:{code}",
            "title": title or code.replace("_", " ").capitalize(),
            "status": status,
            "detail": detail,
            "code": code,
        }
    )


def encode_rejection(rejection: Rejection) -> bytes:
    return problem(rejection.code, rejection.status, rejection.detail)
