"""The public shapes of accounts, holds, transactions and problems, and their JSON encoding.

An answer is encoded once, right after its operation is applied: the same bytes go to the
caller and into the journal (``result``), so a replay answers exactly the first body.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from balance.api.statuses import status_of
from balance.domain.errors import Rejection
from balance.domain.ids import txn_id
from balance.domain.model import CREDIT, DEBIT, EXPIRE, HOLD, RELEASE, Account, Entry, Hold

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CREDIT_DIRECTION = "credit"
DEBIT_DIRECTION = "debit"
TRANSFER_IN_PREFIX = "transfer_in:"  # the key of a cross-shard transfer's arriving leg (``cross_shard``)
encoder = msgspec.json.Encoder()


_TIMESTAMPS: dict[int, str] = {}  # a batch stamps all its rows with one ``now``: format it once
# The date and time up to the second, per second: each operation's stamp is a microsecond of
# its own (a cache by the whole value missed on nearly every answer), and ``datetime``'s
# formatting cost ~2 us a call, four calls an answer (~6% of the event loop's time at half the
# maximum rate, profiled). Only the six digits after the point are formatted per call.
_SECONDS: dict[int, str] = {}


def timestamp(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC, as ``datetime.isoformat`` writes it with
    microseconds (integer arithmetic, no float)."""
    text = _TIMESTAMPS.get(us)
    if text is None:
        if len(_TIMESTAMPS) > 4096:
            _TIMESTAMPS.clear()
        seconds, micro = divmod(us, 1_000_000)
        head = _SECONDS.get(seconds)
        if head is None:
            if len(_SECONDS) > 4096:
                _SECONDS.clear()
            head = _SECONDS[seconds] = (_EPOCH + timedelta(seconds=seconds)).isoformat()[:-6] + "."
        text = head + f"{micro:06d}Z"
        _TIMESTAMPS[us] = text
    return text


def account_view(state: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    """An account state tuple (ACCOUNT_FIELDS order) as its public shape."""
    (id_, parent_id, kind, region, currency, name, status, balance, reserved, credit_limit,
     exhausted, version, created_at, updated_at, metadata) = state[:15]  # fmt: skip
    return {
        "id": id_, "parent_id": parent_id, "kind": kind, "region": region, "currency": currency,
        "name": name, "status": status, "balance": balance, "reserved": reserved,
        "available": balance + credit_limit - reserved, "credit_limit": credit_limit,
        "exhausted": bool(exhausted), "version": version, "created_at": timestamp(created_at),
        "updated_at": timestamp(updated_at), "metadata": msgspec.Raw(metadata),
    }  # fmt: skip


def hold_view(state: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    (account_id, id_, amount, captured, currency, status, destination, expires_at, created_at,
     updated_at, description, metadata) = state[:12]  # fmt: skip
    return {
        "id": id_, "account_id": account_id, "amount": amount, "captured_amount": captured,
        "currency": currency, "status": status, "destination_account_id": destination,
        "expires_at": timestamp(expires_at), "created_at": timestamp(created_at),
        "updated_at": timestamp(updated_at), "description": description,
        "metadata": msgspec.Raw(metadata),
    }  # fmt: skip


def direction(kind: str, op_key: str | None) -> str:
    """``debit`` or ``credit`` from the row's account's point of view. A credit, release or
    expiry gives (money in, or set-aside money freed); a debit or hold takes; of the two rows of
    a transfer or a capture to a destination, the one that started it (it has the operation's
    key) pays and the other (no key, or a cross-shard transfer's arriving leg) receives."""
    if kind == CREDIT or kind == RELEASE or kind == EXPIRE:
        return CREDIT_DIRECTION
    if kind == DEBIT or kind == HOLD or (op_key is not None and not op_key.startswith(TRANSFER_IN_PREFIX)):
        return DEBIT_DIRECTION
    return CREDIT_DIRECTION


def txn_view(row: tuple, shard: int) -> dict[str, Any]:  # type: ignore[type-arg]
    """A journal row (schema.JOURNAL_COLUMNS order) of ``shard``'s journal as a Txn."""
    (seq, account_id, op_key, kind, op_id, _status, _code, _fp, amount, currency, counterparty,
     hold_id, balance_after, reserved_after, version, created_at, description, metadata) = row[:18]  # fmt: skip
    return {
        "id": txn_id(account_id, seq, shard), "operation_id": op_id, "kind": kind,
        "direction": direction(kind, op_key), "account_id": account_id,
        "counterparty_account_id": counterparty, "amount": amount, "currency": currency, "hold_id": hold_id,
        "balance_after": balance_after, "reserved_after": reserved_after, "version": version,
        "created_at": timestamp(created_at), "description": description, "metadata": msgspec.Raw(metadata),
    }  # fmt: skip


# ---- the write path's answers, rendered from byte templates ----------------------------
#
# Every accepted operation is answered with its account (and hold or transaction) right after
# it. Building dicts and encoding them costs more than the rest of the operation; these
# functions write the same bytes (tests/unit/test_views.py checks them against the dict views
# encoded by msgspec) from %-templates, with the parts that rarely change (an account's id,
# parent, kind, region, currency and name) encoded once and cached.

_ACCOUNT_TAIL = (
    b',"status":%b,"balance":%d,"reserved":%d,"available":%d,"credit_limit":%d,"exhausted":%b,'
    b'"version":%d,"created_at":"%b","updated_at":"%b","metadata":%b}'
)
_HOLD = (
    b'{"id":%b,"account_id":%b,"amount":%d,"captured_amount":%d,"currency":%b,"status":%b,'
    b'"destination_account_id":%b,"expires_at":"%b","created_at":"%b","updated_at":"%b",'
    b'"description":%b,"metadata":%b}'
)
_TXN = (
    b'{"id":%b,"operation_id":%b,"kind":%b,"direction":"%b","account_id":%b,"counterparty_account_id":%b,"amount":%d,"currency":%b,'
    b'"hold_id":%b,"balance_after":%d,"reserved_after":%d,"version":%d,"created_at":"%b",'
    b'"description":%b,"metadata":%b}'
)
_BOOL = {True: b"true", False: b"false"}
_CACHE_MAX = 65_536
_heads: dict[
    tuple[str | None, ...], bytes
] = {}  # (id, parent, kind, region, currency, name) -> b'{"id":...,"name":...'
_strings: dict[str | None, bytes] = {None: b"null"}  # low-cardinality strings: kinds, statuses, currencies
_stamps: dict[int, bytes] = {}


def _string(value: str | None) -> bytes:
    """JSON of a repeated short string (cached; unbounded values go through ``encoder``)."""
    encoded = _strings.get(value)
    if encoded is None:
        encoded = encoder.encode(value)
        if len(_strings) < _CACHE_MAX:
            _strings[value] = encoded
    return encoded


def _stamp(us: int) -> bytes:
    text = _stamps.get(us)
    if text is None:
        if len(_stamps) > 4096:
            _stamps.clear()
        text = _stamps[us] = timestamp(us).encode()
    return text


def _account_bytes(account: Account) -> bytes:
    key = (account.id, account.parent_id, account.kind, account.region, account.currency, account.name)
    head = _heads.get(key)
    if head is None:
        if len(_heads) >= _CACHE_MAX:
            _heads.clear()
        head = _heads[key] = b'{"id":%b,"parent_id":%b,"kind":%b,"region":%b,"currency":%b,"name":%b' % (
            encoder.encode(account.id), encoder.encode(account.parent_id), _string(account.kind),
            _string(account.region), _string(account.currency), encoder.encode(account.name),
        )  # fmt: skip
    balance, reserved, credit_limit = account.balance, account.reserved, account.credit_limit
    return head + _ACCOUNT_TAIL % (
        _string(account.status), balance, reserved, balance + credit_limit - reserved, credit_limit,
        _BOOL[bool(account.exhausted)], account.version, _stamp(account.created_at), _stamp(account.updated_at),
        account.metadata,
    )  # fmt: skip


def _hold_bytes(hold: Hold) -> bytes:
    return _HOLD % (
        encoder.encode(hold.id), encoder.encode(hold.account_id), hold.amount, hold.captured_amount,
        _string(hold.currency), _string(hold.status), encoder.encode(hold.destination_account_id),
        _stamp(hold.expires_at), _stamp(hold.created_at), _stamp(hold.updated_at),
        encoder.encode(hold.description), hold.metadata,
    )  # fmt: skip


# shard -> account id -> b'"US-3-t' (the id of the account's rows that shard writes, before the seq)
_txn_prefixes: dict[int, dict[str, bytes]] = {}


def _txn_prefix(account_id: str, shard: int) -> bytes:
    prefixes = _txn_prefixes.get(shard)
    if prefixes is None:
        prefixes = _txn_prefixes[shard] = {}
    prefix = prefixes.get(account_id)
    if prefix is None:
        if len(prefixes) >= _CACHE_MAX:
            prefixes.clear()
        text = encoder.encode(txn_id(account_id, 0, shard))  # b'"US-3-t0"': the id's JSON, seq 0
        prefix = prefixes[account_id] = text[:-2]
    return prefix


def _txn_bytes(entry: Entry, shard: int) -> bytes:
    return _TXN % (
        _txn_prefix(entry.account_id, shard) + b"%d\"" % entry.seq, encoder.encode(entry.op_id), _string(entry.kind),
        direction(entry.kind, entry.op_key).encode(), encoder.encode(entry.account_id),
        encoder.encode(entry.counterparty_account_id), entry.amount, _string(entry.currency),
        encoder.encode(entry.hold_id), entry.balance_after, entry.reserved_after, entry.version,
        _stamp(entry.created_at), encoder.encode(entry.description), entry.metadata,
    )  # fmt: skip


def stamp_bytes(us: int) -> bytes:
    """``timestamp(us)`` as bytes (cached: a batch's rows share one time)."""
    return _stamp(us)


def _raw(value: bytes | str) -> bytes:
    """Stored JSON (a metadata column) as bytes: a driver may give it as text."""
    return value if type(value) is bytes else (value.encode() if isinstance(value, str) else bytes(value))


def txn_row_bytes(row: tuple, shard: int) -> bytes:  # type: ignore[type-arg]
    """``encoder.encode(txn_view(row, shard))``, from a template (the event relay, once per journal row)."""
    (seq, account_id, op_key, kind, op_id, _status, _code, _fp, amount, currency, counterparty,
     hold_id, balance_after, reserved_after, version, created_at, description, metadata) = row[:18]  # fmt: skip
    return _TXN % (
        _txn_prefix(account_id, shard) + b"%d\"" % seq, encoder.encode(op_id), _string(kind),
        direction(kind, op_key).encode(), encoder.encode(account_id), encoder.encode(counterparty), amount,
        _string(currency), encoder.encode(hold_id), balance_after, reserved_after, version, _stamp(created_at),
        encoder.encode(description), _raw(metadata),
    )  # fmt: skip


def hold_state_bytes(state: tuple) -> bytes:  # type: ignore[type-arg]
    """``encoder.encode(hold_view(state))``, from a template (the event relay's hold events)."""
    (account_id, id_, amount, captured, currency, status, destination, expires_at, created_at,
     updated_at, description, metadata) = state[:12]  # fmt: skip
    return _HOLD % (
        encoder.encode(id_), encoder.encode(account_id), amount, captured, _string(currency), _string(status),
        encoder.encode(destination), _stamp(expires_at), _stamp(created_at), _stamp(updated_at),
        encoder.encode(description), _raw(metadata),
    )  # fmt: skip


def encode_account(account: Account) -> bytes:
    return _account_bytes(account)


def encode_money_reply(entry: Entry, accounts: tuple[Account, ...], hold: Hold | None, shard: int) -> bytes:
    """The answer of a successful money operation, from the live objects right after it
    (``shard``: the one that writes ``entry``, named by its transaction id)."""
    if hold is not None:
        return b'{"hold":%b,"account":%b}' % (_hold_bytes(hold), _account_bytes(accounts[0]))
    if len(accounts) == 2:
        return b'{"transaction":%b,"accounts":[%b,%b]}' % (
            _txn_bytes(entry, shard), _account_bytes(accounts[0]), _account_bytes(accounts[1]),
        )  # fmt: skip
    return b'{"transaction":%b,"account":%b}' % (_txn_bytes(entry, shard), _account_bytes(accounts[0]))


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
    return problem(rejection.code, status_of(rejection.code), rejection.detail)
