"""One shard's rows, in seq order, turned into event envelopes.

The relay (and the HTTP feed) read a page of journal and outbox rows after a cursor; the
stream says what else it needs to know (``missing``: accounts it has not seen, holds whose
placement it has not seen), then builds the envelopes (``build``). It keeps what it learns
(each account's fields as of the position reached, recent hold placements), bounded.
"""

from __future__ import annotations

from typing import Any

import msgspec

from balance import views
from balance.domain.cross_shard import TRANSFER_RETURN
from balance.domain.holds import HOLD_KINDS
from balance.domain.ids import hold_journal_keys
from balance.domain.model import EVENT_ACCOUNT_UPDATED, HOLD, MOVE_KINDS, OPEN
from balance.events import catalogue as cat
from balance.events.states import (
    ACCOUNT_ID,
    CODE,
    CREATED_AT,
    HOLD_ID,
    KIND,
    OP_KEY,
    SEQ,
    VERSION,
    AccountHead,
    hold_state_after,
)

# Outbox row positions (``schema.OUTBOX_COLUMNS``).
OUTBOX_SEQ, OUTBOX_KIND, OUTBOX_ACCOUNT_ID, OUTBOX_VERSION, OUTBOX_CREATED_AT, OUTBOX_DATA = range(6)
ACCOUNTS_KNOWN_MAX = 100_000
PLACEMENTS_KNOWN_MAX = 200_000
_MONEY_FIELDS = ("balance", "reserved", "available", "exhausted", "version", "updated_at")
# An envelope (``_envelope``'s dict, in its order) from a template: the relay builds one or two
# per journal row, and dicts encoded by msgspec cost several times more.
_ENVELOPE = (
    b'{"id":%b,"type":%b,"occurred_at":"%b","region":%b,"shard":%d,"seq":%d,"account_id":%b,"version":%d,"data":%b}'
)
_TYPE_JSON = {event_type: views.encoder.encode(event_type) for event_type in cat.TYPES}


class Published:
    """One event: its envelope's bytes and what a sink or a feed routes and filters by."""

    __slots__ = ("id", "type", "seq", "region", "account_id", "body")

    def __init__(self, id: str, type: str, seq: int, region: str, account_id: str, body: bytes) -> None:
        self.id, self.type, self.seq, self.region, self.account_id, self.body = id, type, seq, region, account_id, body


def moves_money(row: tuple) -> bool:  # type: ignore[type-arg]
    """An accepted journal row (not a recorded refusal, nor an account's creation answer). A
    cross-shard leg later refused keeps an empty code: it moved money when it was written. The
    rows of a partner move are no event: the account's versions go on on its new shard."""
    kind = row[KIND]
    return kind != OPEN and kind not in MOVE_KINDS and (not row[CODE] or kind == TRANSFER_RETURN)


def settles_hold(row: tuple) -> bool:  # type: ignore[type-arg]
    """A hold's primary row (its account's): placement, capture, release or expiry."""
    return row[OP_KEY] is not None and row[KIND] in HOLD_KINDS


def placement_keys(account_id: str, hold_id: str) -> tuple[str, str]:
    """The op keys a hold's placement row may have (``ids.hold_journal_keys``: now, and earlier)."""
    keys = hold_journal_keys(hold_id)
    return keys[0], keys[4]


class EventStream:
    """Envelopes of one shard, built in seq order."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.accounts: dict[str, dict[str, Any]] = {}  # account id -> its fields as of the position reached
        self.placements: dict[tuple[str, str], tuple] = {}  # type: ignore[type-arg]  # (account, hold) -> hold row
        self._heads: dict[str, AccountHead] = {}  # account id -> its ``accounts`` entry, encoded
        self._decoder = msgspec.json.Decoder()

    def missing(self, journal: list[tuple]) -> tuple[set[str], set[tuple[str, str]]]:  # type: ignore[type-arg]
        """Accounts and hold placements the page's rows need and the stream does not know."""
        if len(self.accounts) >= ACCOUNTS_KNOWN_MAX:
            self.accounts.clear()  # read again from the tables when next needed (not mid-page)
            self._heads.clear()
        if len(self.placements) >= PLACEMENTS_KNOWN_MAX:
            self.placements.clear()
        accounts: set[str] = set()
        holds: set[tuple[str, str]] = set()
        placed_here: set[tuple[str, str]] = set()
        for row in journal:
            if not moves_money(row):
                continue
            if row[ACCOUNT_ID] not in self.accounts:
                accounts.add(row[ACCOUNT_ID])
            if settles_hold(row):
                key = (row[ACCOUNT_ID], row[HOLD_ID])
                if row[KIND] == HOLD:
                    placed_here.add(key)
                elif key not in self.placements and key not in placed_here:
                    holds.add(key)
        return accounts, holds

    def build(
        self,
        journal: list[tuple],  # type: ignore[type-arg]
        outbox: list[tuple],  # type: ignore[type-arg]
        accounts: list[tuple],  # type: ignore[type-arg]
        later_updates: list[tuple],  # type: ignore[type-arg]
        placements: list[tuple],  # type: ignore[type-arg]
    ) -> list[Published]:
        """Envelopes of ``journal`` and ``outbox`` (both by seq, the same range), with what
        ``missing`` asked for: ``accounts`` (table rows, as of the read), ``later_updates``
        (those accounts' update rows after the cursor, by seq: the first after a row says
        what the account was at that row) and ``placements`` (hold rows)."""
        table = {row[0]: views.account_view(row) for row in accounts}
        updates: dict[str, list[tuple]] = {}  # type: ignore[type-arg]
        for update in later_updates:
            if update[OUTBOX_KIND] == EVENT_ACCOUNT_UPDATED:
                updates.setdefault(update[OUTBOX_ACCOUNT_ID], []).append(update)
        for placement in placements:
            self._place(placement)
        published: list[Published] = []
        rows = sorted([(row[SEQ], 0, row) for row in journal] + [(row[OUTBOX_SEQ], 1, row) for row in outbox])
        for seq, source, row in rows:
            if source == 1:
                self._outbox_events(row, published)
            elif moves_money(row):
                static = self._account(row[ACCOUNT_ID], seq, table, updates)
                self._journal_events(row, static, published)
        return published

    # ---- what the stream knows ----------------------------------------------------------

    def _account(
        self,
        account_id: str,
        seq: int,
        table: dict[str, dict[str, Any]],
        updates: dict[str, list[tuple]],  # type: ignore[type-arg]
    ) -> dict[str, Any]:
        static = self.accounts.get(account_id)
        if static is not None:
            return static
        later = next((u for u in updates.get(account_id, ()) if u[OUTBOX_SEQ] > seq and u[OUTBOX_DATA]), None)
        if later is not None:
            static = self._decoder.decode(later[OUTBOX_DATA]).get("previous")
        if static is None:
            static = table.get(account_id)
        if static is None:  # not stored (cannot be: an account's row is written with its creation)
            region = account_id.partition("-")[0]
            static = {"id": account_id, "region": region, "credit_limit": 0}
        self._remember(account_id, static)
        return static

    def _remember(self, account_id: str, static: dict[str, Any]) -> None:
        self.accounts[account_id] = static  # bounded by ``missing``, between pages
        self._heads.pop(account_id, None)

    def _place(self, row: tuple) -> None:  # type: ignore[type-arg]
        self.placements[(row[ACCOUNT_ID], row[HOLD_ID])] = row

    # ---- envelopes ----------------------------------------------------------------------

    def _journal_events(self, row: tuple, static: dict[str, Any], out: list[Published]) -> None:  # type: ignore[type-arg]
        account_id = row[ACCOUNT_ID]
        head = self._heads.get(account_id)
        if head is None:
            head = self._heads[account_id] = AccountHead(account_id, static)
        account = head.render(row)
        seq, version, occurred = row[SEQ], row[VERSION], views.stamp_bytes(row[CREATED_AT])
        data = b'{"account":%b,"transaction":%b}' % (account, views.txn_row_bytes(row, self.shard))
        out.append(self._journal_envelope(cat.TRANSACTION_CREATED, head, seq, version, occurred, data))
        if settles_hold(row):
            key = (account_id, row[HOLD_ID])
            if row[KIND] == HOLD:
                self._place(row)
            placement = self.placements.get(key)
            if placement is not None:
                data = b'{"account":%b,"hold":%b}' % (account, views.hold_state_bytes(hold_state_after(placement, row)))
                out.append(self._journal_envelope(cat.HOLD_UPDATED, head, seq, version, occurred, data))

    def _journal_envelope(
        self, event_type: str, head: AccountHead, seq: int, version: int, occurred: bytes, data: bytes
    ) -> Published:
        """``_envelope``'s bytes, from the template."""
        region = head.region
        event_id = cat.event_id(region, self.shard, seq, event_type)
        body = _ENVELOPE % (
            views.encoder.encode(event_id), _TYPE_JSON[event_type], occurred, head.region_json, self.shard, seq,
            head.id_json, version, data,
        )  # fmt: skip
        return Published(event_id, event_type, seq, region, head.account_id, body)

    def _outbox_events(self, row: tuple, out: list[Published]) -> None:  # type: ignore[type-arg]
        event_type = cat.OUTBOX_TYPES.get(row[OUTBOX_KIND])
        if event_type is None:
            return
        account_id = row[OUTBOX_ACCOUNT_ID]
        data: dict[str, Any] = {} if not row[OUTBOX_DATA] else self._decoder.decode(row[OUTBOX_DATA])
        account = data.get("account")
        if account is None:  # a row of an earlier version: the fields known, as of this version
            account = dict(self.accounts.get(account_id) or {"id": account_id})
            account["version"] = row[OUTBOX_VERSION]
            data["account"] = account
        else:
            self._remember(account_id, {k: v for k, v in account.items() if k not in _MONEY_FIELDS})
        region = account.get("region") or account_id.partition("-")[0]
        out.append(
            self._envelope(
                event_type, region, row[OUTBOX_SEQ], account_id, row[OUTBOX_VERSION], row[OUTBOX_CREATED_AT], data
            )
        )

    def _envelope(
        self, event_type: str, region: str, seq: int, account_id: str, version: int, at: int, data: dict[str, Any]
    ) -> Published:
        event_id = cat.event_id(region, self.shard, seq, event_type)
        body = views.encoder.encode(
            {
                "id": event_id, "type": event_type, "occurred_at": views.timestamp(at), "region": region,
                "shard": self.shard, "seq": seq, "account_id": account_id, "version": version, "data": data,
            }
        )  # fmt: skip
        return Published(event_id, event_type, seq, region, account_id, body)
