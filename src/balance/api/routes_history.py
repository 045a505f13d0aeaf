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

CURSOR_DIGITS_MAX = 18  # below SEQ_MAX (2^63 - 1), and what the OpenAPI document says

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def transactions(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    limit = int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.HISTORY_LIMIT_MAX)
    cursor = request.query.get("cursor")
    before_seq = None
    if cursor is not None:  # a journal seq: 1 to 18 digits (seqs stay far below 10^18)
        if not (cursor.isascii() and cursor.isdigit()) or not 1 <= len(cursor) <= CURSOR_DIGITS_MAX:
            raise validation("cursor is not one this service gave out")
        before_seq = int(cursor)
    since, until = time_query(request.query, "since"), time_query(request.query, "until")
    port = app.service.port_for(params[0])
    assert port is not None
    rows = await port.history(params[0], limit, before_seq, since, until)
    next_cursor = str(rows[-1][JOURNAL_SEQ]) if len(rows) == limit else None
    return json_reply(200, {"data": [views.txn_view(row) for row in rows], "next_cursor": next_cursor})


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
