"""The public response shapes, as msgspec Structs: the OpenAPI document is generated from them.

The service itself renders these shapes in ``balance.views`` (dicts for reads, byte templates on
the write path); tests check both against each other.
"""

from __future__ import annotations

from typing import Any, Literal

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
    id: str  # the row's own id: <REGION>-<shard>-t<seq>
    operation_id: str  # the client's id of the operation
    kind: str
    direction: Literal["debit", "credit"]  # from account_id's point of view
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


class MoveReply(msgspec.Struct):
    """A partner move, as it ended: ``done`` or ``rolled_back`` (``error`` says why)."""

    move_id: str
    account_id: str
    from_shard: int
    to_shard: int
    status: Literal["done", "rolled_back"]
    accounts: int
    holds: int
    seconds: float
    error: str | None


class PlacementView(msgspec.Struct):
    """Where an account lives: its shard (and whether that differs from the one its id names)."""

    account_id: str
    shard: int
    moved: bool


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
