"""The public response shapes, as msgspec Structs: the OpenAPI document is generated from them.

The service itself renders these shapes in ``balance.views`` (dicts for reads, byte templates on
the write path); tests check both against each other.
"""

from __future__ import annotations

from typing import Any

import msgspec


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


class KeyInfo(msgspec.Struct):
    """A key as listed: never the key itself nor its hash."""

    key_id: str
    account_id: str
    prefix: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None
    client_id: str | None


class KeyReply(msgspec.Struct):
    """A new key: ``key`` is shown in this answer only (null when a client id replays it)."""

    key: str | None
    account_id: str
    key_id: str
    prefix: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None
    client_id: str | None
    replayed: bool
