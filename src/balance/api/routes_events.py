"""``GET /v1/events``: the event feed, long-polled (``relay.feed``), scoped like every read."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec

from balance.api.answers import json_reply, validation
from balance.api.parsing import int_query
from balance.domain import authority as a
from balance.domain import errors as e
from balance.domain import limits
from balance.engine.replies import Reply
from balance.relay.feed import CursorError, CursorExpired, format_cursor, parse_cursor
from balance.views import problem

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request
    from balance.service import BalanceService

POLL_S = 0.05  # while long-polling: how often the shards' sequence numbers are looked at


async def events(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    service, actor = app.service, request.actor
    limit = int_query(request.query, "limit", limits.EVENTS_LIMIT_DEFAULT, limits.EVENTS_LIMIT_MAX)
    wait_s = _wait_s(request.query.get("wait_s"))
    cursor = request.query.get("after")
    if cursor == "":
        raise validation("after is empty: leave it out to read from the start")
    try:
        positions = parse_cursor(cursor, len(service.shards))
    except CursorError as exc:
        raise validation(str(exc)) from None
    if actor is a.ADMIN_ACTOR:

        def visible(account_id: str) -> bool:
            return True
    else:

        def visible(account_id: str) -> bool:
            return a.may_read(actor, service.chain(account_id))

    feed = app.events_feed()
    deadline = time.monotonic() + wait_s
    fresh = cursor is None  # no cursor: from the oldest event kept
    while True:
        seen = _committed(service)
        try:
            found, after = await feed.read(positions, limit, visible, fresh=fresh)
        except CursorExpired as exc:
            return _expired(exc.oldest)
        if found or time.monotonic() >= deadline:
            break
        positions, fresh = after, False  # rows the key may not see: read past them
        while time.monotonic() < deadline and _committed(service) == seen:
            await asyncio.sleep(POLL_S)
    body = {"data": [msgspec.Raw(event.body) for event in found], "next_cursor": format_cursor(after)}
    return json_reply(200, body)


def _expired(oldest: list[int]) -> Reply:
    """410: events after the cursor were pruned (``BALANCE_EVENTS_RETENTION_S``). The client
    reconciles (reads the accounts it follows) and resumes at ``oldest_cursor``."""
    detail = (
        "events after this cursor are no longer kept (older than the retention);"
        " reconcile from the accounts, then resume at oldest_cursor"
    )
    document = {**msgspec.json.decode(problem(e.CURSOR_EXPIRED, 410, detail)), "oldest_cursor": format_cursor(oldest)}
    return json_reply(410, document)


def _committed(service: BalanceService) -> list[int]:
    """Each shard's next seq after what is committed (batches still being written not counted)."""
    return service.committed_seqs()


def _wait_s(raw: str | None) -> int:
    """Absent: 0 (no wait). Empty (``wait_s=``) is a 422 like every other empty query value."""
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 2 or int(raw) > limits.EVENTS_WAIT_S_MAX:
        raise validation(f"wait_s must be an integer from 0 to {limits.EVENTS_WAIT_S_MAX}")
    return int(raw)
