"""An account's history: its journal rows, newest first, a page at a time (cursor: a journal seq)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance import views
from balance.api.access import require_account
from balance.api.answers import json_reply, validation
from balance.api.parsing import SEQ_MAX, int_query, time_query
from balance.domain import limits
from balance.domain.model import JOURNAL_SEQ
from balance.engine.replies import Reply

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def transactions(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    limit = int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.HISTORY_LIMIT_MAX)
    cursor = request.query.get("cursor") or None
    before_seq = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19 or int(cursor) > SEQ_MAX:
            raise validation("cursor is not one this service gave out")
        before_seq = int(cursor)
    since, until = time_query(request.query, "since"), time_query(request.query, "until")
    port = app.service.port_for(params[0])
    assert port is not None
    rows = await port.history(params[0], limit, before_seq, since, until)
    next_cursor = str(rows[-1][JOURNAL_SEQ]) if len(rows) == limit else None
    return json_reply(200, {"data": [views.txn_view(row) for row in rows], "next_cursor": next_cursor})
