"""An account's history: its journal rows, newest first, a page at a time (cursor: a journal seq;
for a moved account, merged over the shards it lived on), and one row by its id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balance.api.access import require_account
from balance.api.answers import HttpError, json_reply, validation
from balance.api.parsing import SEQ_MAX, int_query, time_query
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.ids import txn_shard_seq
from balance.engine.replies import Reply
from balance.shards import shard_in_id

CURSOR_DIGITS_MAX = 18  # below SEQ_MAX (2^63 - 1), and what the OpenAPI document says

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def transactions(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    limit = int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.HISTORY_LIMIT_MAX)
    cursor = request.query.get("cursor")
    before_seq = None
    since, until = time_query(request.query, "since"), time_query(request.query, "until")
    shards = app.service.history_shards(params[0])
    if len(shards) > 1 or (cursor is not None and not _digits(cursor)):
        # A moved account: its rows on each shard it lived on (or a cursor of that form).
        return await _merged(app, params[0], shards, limit, cursor, since, until)
    if cursor is not None:  # a journal seq: 1 to 18 digits (seqs stay far below 10^18)
        if not (cursor.isascii() and cursor.isdigit()) or not 1 <= len(cursor) <= CURSOR_DIGITS_MAX:
            raise validation("cursor is not one this service gave out")
        before_seq = int(cursor)
    got = await app.service.history_on(shards[0], params[0], limit, before_seq, since, until)
    if isinstance(got, Reply):
        return got
    next_cursor = str(got[-1][1]) if len(got) == limit else None
    return json_reply(200, {"data": [txn for _, _, txn in got], "next_cursor": next_cursor})


async def _merged(
    app: BalanceApp, account_id: str, shards: list[int], limit: int, cursor: str | None, since: int | None,
    until: int | None,
) -> Reply:  # fmt: skip
    """Every shard the account lived on (those of other nodes asked of their owners), merged
    newest first: each shard's rows in the order of its journal (newest seq first), the shards'
    next rows taken by (created_at, shard, seq). The cursor says where each shard's rows go on
    (``p<shard>.<seq>-<shard>.<seq>…``: the next rows are those below that seq), so no row is
    listed twice or skipped, whatever the shards' clocks did (a row stamped earlier than the
    one before it on its shard only comes out of time order). A shard the cursor does not name
    is read from its newest row (the account reached it after the first page). An earlier
    cursor (``m<created_at>-<shard>-<seq>``: the last row's key) is still read, and so is a
    seq (given before the account first moved: its rows were on the shard its id names)."""
    positions: dict[int, int] = {}  # shard -> its next rows are below this seq
    after: tuple[int, int, int] | None = None
    if cursor is not None:
        if cursor.startswith("p"):
            for part in cursor[1:].split("-"):
                shard_text, _, seq_text = part.partition(".")
                if not (_digits(shard_text) and _digits(seq_text)):
                    raise validation("cursor is not one this service gave out")
                positions[int(shard_text)] = int(seq_text)
        elif _digits(cursor):
            positions = dict.fromkeys(shards, 0)
            home = shard_in_id(account_id)
            if home is not None:
                positions[home] = int(cursor)
        else:
            parts = cursor[1:].split("-") if cursor.startswith("m") else []
            if len(parts) != 3 or not all(_digits(p) for p in parts):
                raise validation("cursor is not one this service gave out")
            after = (int(parts[0]), int(parts[1]), int(parts[2]))
    streams: dict[int, list[tuple[int, int, Any]]] = {}
    for shard in shards:
        before_seq, upto = positions.get(shard), until
        if after is not None:  # the earlier cursor: the rows after the last row's key
            if shard == after[1]:
                before_seq = after[2]
            else:  # created_at <= the cursor's on a lower shard, < on a higher one
                bound = after[0] + 1 if shard < after[1] else after[0]
                upto = bound if upto is None else min(upto, bound)
        got = await app.service.history_on(shard, account_id, limit, before_seq, since, upto)
        if isinstance(got, Reply):  # a shard of another node that does not answer: no page with a gap
            return got
        streams[shard] = got
    page: list[Any] = []
    taken = dict.fromkeys(streams, 0)
    while len(page) < limit:
        best, best_key = -1, (-1, -1, -1)
        for shard, rows in streams.items():
            if taken[shard] < len(rows):
                head = rows[taken[shard]]
                key = (head[0], shard, head[1])
                if key > best_key:
                    best, best_key = shard, key
        if best < 0:
            break
        page.append(streams[best][taken[best]][2])
        taken[best] += 1
    next_cursor = None
    if len(page) == limit:
        # Each shard goes on below its last row listed, or from its first row not listed (the
        # rows it gave were all there were below the cursor: so nothing newer on it is listed
        # later than this page's start); a shard with nothing more: below 0.
        marks = []
        for shard, rows in streams.items():
            if taken[shard] > 0:
                at = rows[taken[shard] - 1][1]
            else:
                at = rows[0][1] + 1 if rows else 0
            marks.append(f"{shard}.{at}")
        next_cursor = "p" + "-".join(marks)
    return json_reply(200, {"data": page, "next_cursor": next_cursor})


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= len(text) <= CURSOR_DIGITS_MAX


async def transaction(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    """One row of the account's history. Its id names the shard that wrote it and the seq
    there (``ids.txn_id``): read as that shard's history page that ends at that seq (asked of
    its owner on a fleet), so only the account's own rows are found. The shard must be one
    the account's history is on. An id of the earlier form (every id named the account's home
    shard, also for rows written on another shard after a move) is looked for on the other
    shards of its history too, if the home shard has no such row of the account."""
    account_id, wanted = params
    require_account(app, request, account_id)
    named = txn_shard_seq(account_id, wanted)
    if named is not None and named[1] < SEQ_MAX:
        named_shard, seq = named
        shards = app.service.history_shards(account_id)
        tries = [named_shard] if named_shard in shards else []
        if named_shard == shard_in_id(account_id):
            tries += [shard for shard in shards if shard != named_shard]
        for shard in tries:
            got = await app.service.history_on(shard, account_id, 1, seq + 1, None, None)
            if isinstance(got, Reply):
                return got
            if got and got[0][1] == seq:
                return json_reply(200, got[0][2])
    raise HttpError(e.TRANSACTION_NOT_FOUND, 404, f"transaction {wanted[:80]} not found on account {account_id}")
