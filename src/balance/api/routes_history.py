"""An account's history: its journal rows, newest first, a page at a time (cursor: a journal seq),
and one row by its id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance import views
from balance.api.access import require_account
from balance.api.answers import HttpError, json_reply, validation
from balance.api.parsing import SEQ_MAX, int_query, time_query
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.ids import txn_seq
from balance.domain.model import JOURNAL_SEQ
from balance.engine.replies import Reply
from balance.shards import ShardPort

JOURNAL_CREATED_AT = 15  # in a journal row (``schema.JOURNAL_COLUMNS``)
CURSOR_DIGITS_MAX = 18  # below SEQ_MAX (2^63 - 1), and what the OpenAPI document says

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def transactions(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    limit = int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.HISTORY_LIMIT_MAX)
    cursor = request.query.get("cursor")
    before_seq = None
    since, until = time_query(request.query, "since"), time_query(request.query, "until")
    ports = app.service.history_ports(params[0])
    if len(ports) > 1:  # a moved account: its rows on each shard it lived on
        return await _merged(params[0], ports, limit, cursor, since, until)
    if cursor is not None:  # a journal seq: 1 to 18 digits (seqs stay far below 10^18)
        if not (cursor.isascii() and cursor.isdigit()) or not 1 <= len(cursor) <= CURSOR_DIGITS_MAX:
            raise validation("cursor is not one this service gave out")
        before_seq = int(cursor)
    port = ports[0]
    rows = await port.history(params[0], limit, before_seq, since, until)
    next_cursor = str(rows[-1][JOURNAL_SEQ]) if len(rows) == limit else None
    return json_reply(200, {"data": [views.txn_view(row) for row in rows], "next_cursor": next_cursor})


async def _merged(
    account_id: str, ports: list[ShardPort], limit: int, cursor: str | None, since: int | None, until: int | None
) -> Reply:
    """Newest first by (created_at, shard, seq) over every shard the account lived on; the
    cursor is the last row's key (``m<created_at>-<shard>-<seq>``). Each shard's rows are its
    own (the move's rows are not listed), so none is listed twice and none skipped."""
    after: tuple[int, int, int] | None = None
    if cursor is not None:
        parts = cursor[1:].split("-") if cursor.startswith("m") else []
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() and 1 <= len(p) <= CURSOR_DIGITS_MAX for p in parts):
            raise validation("cursor is not one this service gave out")
        after = (int(parts[0]), int(parts[1]), int(parts[2]))
    keyed: list[tuple[tuple[int, int, int], tuple]] = []  # type: ignore[type-arg]
    for port in ports:
        shard, before_seq, upto = port.shard, None, until
        if after is not None:
            if shard == after[1]:
                before_seq = after[2]
            else:  # created_at <= the cursor's on a lower shard, < on a higher one
                bound = after[0] + 1 if shard < after[1] else after[0]
                upto = bound if upto is None else min(upto, bound)
        for row in await port.history(account_id, limit, before_seq, since, upto):
            keyed.append(((row[JOURNAL_CREATED_AT], shard, row[JOURNAL_SEQ]), row))
    keyed.sort(key=lambda item: item[0], reverse=True)
    page = keyed[:limit]
    next_cursor = f"m{page[-1][0][0]}-{page[-1][0][1]}-{page[-1][0][2]}" if len(page) == limit else None
    return json_reply(200, {"data": [views.txn_view(row) for _, row in page], "next_cursor": next_cursor})


async def transaction(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    """One row of the account's history. Its id names the seq (``ids.txn_id``): read as the
    history page that ends at that seq, so no other storage read is needed."""
    account_id, wanted = params
    require_account(app, request, account_id)
    seq = txn_seq(account_id, wanted)
    port = app.service.port_for(account_id)
    assert port is not None
    rows = [] if seq is None or seq > SEQ_MAX - 1 else await port.history(account_id, 1, seq + 1, None, None)
    if not rows or rows[0][JOURNAL_SEQ] != seq:
        raise HttpError(e.TRANSACTION_NOT_FOUND, 404, f"transaction {wanted[:80]} not found on account {account_id}")
    return json_reply(200, views.txn_view(rows[0]))
