"""What the expiry job reads of a shard database, for either driver's placeholder style (``?``
or ``%s``): the checkpoint's seq, the hold rows of the journal after it, and the checkpoint's
pending holds by expiry (the table's primary key), a page at a time. Reads only."""

from __future__ import annotations

from balance.domain.holds import HOLD_KINDS
from balance.domain.model import HOLD_PENDING
from balance.storage import schema

CHECKPOINT = f"SELECT value FROM meta WHERE name = '{schema.CHECKPOINT_META_KEY}'"
_KINDS = ",".join(f"'{kind}'" for kind in HOLD_KINDS)
# A hold's primary rows after the checkpoint (the counterparty's copy has no op key), by seq.
TAIL_PAGE = (
    "SELECT seq, account_id, op_key, kind, hold_id, expires_at FROM journal"
    f" WHERE seq > {{p}} AND kind IN ({_KINDS}) AND status < 300 AND op_key IS NOT NULL ORDER BY seq LIMIT {{p}}"
)
# The checkpoint's pending holds due by now, after (expires_at, account_id, id), in that order.
# ``expires_at >= last`` bounds the index range from below (the OR alone does not: each page
# would scan the index from the oldest due hold again).
DUE_PAGE = (
    f"SELECT expires_at, account_id, id FROM holds WHERE status = '{HOLD_PENDING}' AND expires_at <= {{p}}"
    " AND expires_at >= {p}"
    " AND (expires_at > {p} OR (expires_at = {p} AND (account_id > {p} OR (account_id = {p} AND id > {p}))))"
    " ORDER BY expires_at, account_id, id LIMIT {p}"
)


def sql(template: str, placeholder: str) -> str:
    return template.replace("{p}", placeholder)


def due_args(now: int, after: tuple[int, str, str], limit: int) -> tuple[object, ...]:
    expires_at, account_id, hold_id = after
    return (now, expires_at, expires_at, expires_at, account_id, account_id, hold_id, limit)
