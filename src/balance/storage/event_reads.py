"""What the event relay and the HTTP feed read of a shard database, for either driver's
placeholder style (``?`` or ``%s``): pages of journal and outbox rows after a cursor, and what
the event stream asks for besides (``balance.events.stream``); the relay's cursor rows."""

from __future__ import annotations

from balance.domain.model import EVENT_ACCOUNT_UPDATED
from balance.storage import schema

# The journal's columns in their order, but not the stored answer nor the fingerprint (no event
# carries them; the answer is the row's largest column): NULL in their place.
_EVENT_JOURNAL_COLUMNS = ",".join("NULL" if c in ("result", "fingerprint") else c for c in schema.JOURNAL_COLUMNS)
JOURNAL_PAGE = f"SELECT {_EVENT_JOURNAL_COLUMNS} FROM journal WHERE seq > {{p}} ORDER BY seq LIMIT {{p}}"
OUTBOX_PAGE = f"SELECT {','.join(schema.OUTBOX_COLUMNS)} FROM outbox WHERE seq > {{p}} ORDER BY seq LIMIT {{p}}"
CURSOR = "SELECT value FROM meta WHERE name = {p}"
# The oldest row after the cursor: its age is the relay's lag.
OLDEST_AFTER = (
    "SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM journal WHERE seq = (SELECT MIN(seq) FROM journal"
    " WHERE seq > {p}) UNION ALL SELECT MIN(created_at) FROM outbox WHERE seq > {p}) AS oldest"
)
# Pruning the outbox, a slice at a time from its oldest row (``prune_bound``): the slice's rows,
# the newest row (never deleted: the next seq after a restart is the largest kept, so a deleted
# newest row would give its seq out again), the delete by the primary key, and the watermark:
# every outbox row at or below it may be gone (a feed cursor below it is expired).
OUTBOX_HEAD = "SELECT seq, created_at FROM outbox ORDER BY seq LIMIT {p}"
OUTBOX_NEWEST = "SELECT MAX(seq) FROM outbox"
PRUNE_UP_TO = "DELETE FROM outbox WHERE seq <= {p}"
PRUNED_META = f"{schema.EVENTS_CURSOR_META_PREFIX}pruned"
PRUNED = "SELECT value FROM meta WHERE name = {p}"
PRUNED_SAVE_SQLITE = (
    "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)"
)
PRUNED_SAVE_MARIADB = (
    "INSERT INTO meta (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE value = GREATEST(value, VALUES(value))"
)
PRUNE_SLICE_ROWS = 200  # outbox rows deleted per transaction (the writer waits at most for one slice: ~5-10 ms)
PRUNE_PAUSE_S = 0.05  # at least this long between two slices, and four times the last slice's time
MAX_SEQ = "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM journal UNION ALL SELECT MAX(seq) FROM outbox) AS m"


def sql(template: str, placeholder: str) -> str:
    return template.replace("{p}", placeholder)


def cursor_name(sink: str) -> str:
    """The meta row of a sink's cursor: ``events_amqp_seq``, ``events_nats_seq``."""
    return f"{schema.EVENTS_CURSOR_META_PREFIX}{sink}_seq"


def accounts_by_id(placeholder: str, count: int) -> str:
    marks = ",".join([placeholder] * count)
    return f"SELECT {','.join(schema.ACCOUNT_COLUMNS)} FROM accounts WHERE id IN ({marks})"


def updates_after(placeholder: str, count: int) -> str:
    """Account updates of these accounts after the cursor, by seq (the first after a row says
    what the account was at that row: ``EventStream.build``)."""
    marks = ",".join([placeholder] * count)
    return (
        f"SELECT {','.join(schema.OUTBOX_COLUMNS)} FROM outbox WHERE account_id IN ({marks})"
        f" AND seq > {placeholder} AND kind = '{EVENT_ACCOUNT_UPDATED}' ORDER BY seq"
    )


def placements(placeholder: str, count: int) -> str:
    """Hold rows by (op_key, account_id) pairs (the ``journal_key`` index)."""
    one = f"(op_key = {placeholder} AND account_id = {placeholder})"
    return f"SELECT {','.join(schema.JOURNAL_COLUMNS)} FROM journal WHERE " + " OR ".join([one] * count)


def prune_bound(head: list[tuple], newest: int | None, up_to: int, before_us: int) -> int | None:  # type: ignore[type-arg]
    """The largest seq of the oldest outbox rows (``head``, by seq) that may all go: published up
    to ``up_to``, created before ``before_us``, and not the newest row. None: none may."""
    bound = None
    for seq, created_at in head:
        if seq > up_to or created_at >= before_us or newest is None or seq >= newest:
            break
        bound = int(seq)
    return bound


def within(journal: list[tuple], outbox: list[tuple], limit: int) -> tuple[list[tuple], list[tuple]]:  # type: ignore[type-arg]
    """Both pages cut at the same seq: a full page may end before the other's rows."""
    upper = min(
        journal[-1][0] if len(journal) == limit else 2**63,
        outbox[-1][0] if len(outbox) == limit else 2**63,
    )
    return [row for row in journal if row[0] <= upper], [row for row in outbox if row[0] <= upper]
