"""Request bodies, validated while decoding (msgspec): shape errors never reach the engine."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from balance.domain import limits

# 1 to 64 of these characters, but not "." or ".." (path segments: a URL holding one means
# something else to every proxy and client library on the way). The end is ``(?![\s\S])``, not
# ``$``: msgspec searches with Python's ``re``, whose ``$`` also matches before a final newline
# (``"x\n"`` passed); the lookahead means "end of text" in Python and in the ECMA 262 regexes
# JSON Schema validators use.
ID_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9._:-]{1,64}(?![\s\S])"

OpId = Annotated[str, Meta(pattern=ID_PATTERN, description="client-chosen operation id")]
AccountId = Annotated[str, Meta(pattern=ID_PATTERN)]
Amount = Annotated[int, Meta(ge=limits.AMOUNT_MIN, le=limits.AMOUNT_MAX, description="minor units")]
CreditLimit = Annotated[int, Meta(ge=0, le=limits.CREDIT_LIMIT_MAX)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}(?![\s\S])", description="ISO 4217 code")]
Name = Annotated[str, Meta(max_length=limits.NAME_LENGTH_MAX)]
Description = Annotated[str, Meta(max_length=limits.DESCRIPTION_LENGTH_MAX)]
ExpiresInS = Annotated[int, Meta(ge=limits.EXPIRES_IN_S_MIN, le=limits.EXPIRES_IN_S_MAX)]
Metadata = dict[str, Any]
Kind = Literal["partner", "provider", "user"]
Region = Literal["US", "EU", "ASIA"]
AccountStatus = Literal["active", "frozen", "closed"]
Scope = Literal["read", "move", "funds", "limits", "platform"]  # authority.SCOPE_NAMES


class NewAccount(Struct, forbid_unknown_fields=True):
    kind: Kind
    parent_id: AccountId | None = None
    region: Region | None = None  # default: the parent's
    currency: Currency | None = None  # default: the parent's; required at the top
    credit_limit: CreditLimit = 0
    name: Name = ""
    metadata: Metadata = {}
    client_id: OpId | None = None  # a retry with the same id and body answers the first creation


class NewKey(Struct, forbid_unknown_fields=True):
    """A key's scopes (default: read and move, at most the creating key's) and an optional
    client id that makes the creation replayable."""

    scopes: Annotated[list[Scope], Meta(min_length=1)] | None = None
    client_id: OpId | None = None


class MoveBody(Struct, forbid_unknown_fields=True):
    """Where a partner moves with its subtree (docs/moves.md)."""

    to_shard: Annotated[int, Meta(ge=0, le=65_535)]


class AccountPatch(Struct, forbid_unknown_fields=True):
    status: AccountStatus | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    credit_limit: CreditLimit | UnsetType = UNSET


class CreditBody(Struct, forbid_unknown_fields=True):
    id: OpId
    amount: Amount
    description: Description = ""
    metadata: Metadata = {}


class DebitBody(CreditBody, forbid_unknown_fields=True):
    pass


class TransferBody(Struct, forbid_unknown_fields=True):
    id: OpId
    from_account_id: AccountId
    to_account_id: AccountId
    amount: Amount
    currency: Currency
    description: Description = ""
    metadata: Metadata = {}


class HoldBody(Struct, forbid_unknown_fields=True):
    id: OpId
    amount: Amount
    expires_in_s: ExpiresInS = limits.EXPIRES_IN_S_DEFAULT
    destination_account_id: AccountId | None = None
    description: Description = ""
    metadata: Metadata = {}


class CaptureBody(Struct, forbid_unknown_fields=True):
    amount: Amount | None = None


class ReleaseBody(Struct, forbid_unknown_fields=True):
    pass


# Batch operations: the single endpoints' bodies plus the account, tagged by "op".


class CreditOp(CreditBody, tag_field="op", tag="credit", kw_only=True, forbid_unknown_fields=True):
    account_id: AccountId


class DebitOp(CreditBody, tag_field="op", tag="debit", kw_only=True, forbid_unknown_fields=True):
    account_id: AccountId


class TransferOp(TransferBody, tag_field="op", tag="transfer", forbid_unknown_fields=True):
    pass


class HoldOp(HoldBody, tag_field="op", tag="hold", kw_only=True, forbid_unknown_fields=True):
    account_id: AccountId


class CaptureOp(CaptureBody, tag_field="op", tag="capture", kw_only=True, forbid_unknown_fields=True):
    account_id: AccountId
    hold_id: OpId


class ReleaseOp(ReleaseBody, tag_field="op", tag="release", kw_only=True, forbid_unknown_fields=True):
    account_id: AccountId
    hold_id: OpId


BatchOp = CreditOp | DebitOp | TransferOp | HoldOp | CaptureOp | ReleaseOp


class BatchBody(Struct, forbid_unknown_fields=True):
    operations: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=limits.BATCH_OPERATIONS_MAX)]


def canonical_metadata(metadata: dict[str, Any]) -> bytes:
    """Metadata as canonical JSON bytes (sorted keys): stored as is, fingerprinted as is."""
    return msgspec.json.encode(metadata, order="sorted")
