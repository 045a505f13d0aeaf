"""A ``hold.expiry-due`` notice, its id, and which holds are due, from what a shard committed.

Pure: no IO. Why the journal's tail is read besides the holds table: the holds table is a
checkpoint (``storage.schema.CHECKPOINT_META_KEY``): the engine brings it up to date every
couple of seconds, a slice per batch, so it lags the journal, and after a crash it stays
behind until the shard has recovered. A hold placed after the checkpoint is only in the
journal; one settled after it is still ``pending`` in the table. The committed state that
does not lag is the table *plus* the journal's hold rows after the checkpoint's seq, read in
one snapshot: exactly what recovery loads (``engine.recovery``). The tail is short (at most a
checkpoint interval's rows), the table is read in its primary key's order (expiry first), a page at a
time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from balance.domain.holds import SETTLED_STATUS
from balance.domain.ids import CLIENT_OP_PREFIX, legacy_op_key
from balance.domain.model import HOLD
from balance.views import timestamp

NOTICE_TYPE = "hold.expiry-due"
ID_MAX = 64  # account and hold ids are at most this long (the schema's VARCHAR(64))


@dataclass(frozen=True, slots=True)
class Due:
    """A pending hold past its expiry (``expires_at`` in microseconds since the epoch)."""

    expires_at: int
    account_id: str
    hold_id: str


@dataclass(frozen=True, slots=True)
class Notice:
    shard: int
    account_id: str
    hold_id: str


def notice_id(region: str, shard: int, due: Due, round_: int) -> str:
    """Stable within a resend round (``round_``: the resend interval the publish falls in), so
    a notice published twice in one round (a job restarted, two jobs) is one message to NATS
    (``Nats-Msg-Id``); the next round's resend is a new message. Account ids hold no dot."""
    return f"{region}-{shard}-x.{due.account_id}.{due.hold_id}.r{round_}"


def encode(notice_id_: str, shard: int, due: Due) -> bytes:
    return msgspec.json.encode({
        "id": notice_id_, "type": NOTICE_TYPE, "shard": shard, "account_id": due.account_id,
        "hold_id": due.hold_id, "expires_at": timestamp(due.expires_at),
    })  # fmt: skip


_decoder = msgspec.json.Decoder()


def decode(body: bytes) -> Notice | None:
    """The notice, or None if ``body`` is not one (untrusted: anyone who can publish to the queue)."""
    try:
        value: Any = _decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(value, dict) or value.get("type") != NOTICE_TYPE:
        return None
    shard, account_id, hold_id = value.get("shard"), value.get("account_id"), value.get("hold_id")
    if type(shard) is not int or not (isinstance(account_id, str) and isinstance(hold_id, str)):
        return None
    if not (0 < len(account_id) <= ID_MAX and 0 < len(hold_id) <= ID_MAX):
        return None
    return Notice(shard, account_id, hold_id)


class Tail:
    """The journal's hold rows after the checkpoint, folded: holds placed (with their expiry)
    and holds settled (captured, released, expired) since. Rows: (seq, account_id, op_key,
    kind, hold_id, expires_at), by seq (``storage.expiry_reads.TAIL_PAGE``)."""

    __slots__ = ("placed", "settled")

    def __init__(self) -> None:
        self.placed: dict[tuple[str, str], int] = {}
        self.settled: set[tuple[str, str]] = set()

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        for _, account_id, op_key, kind, hold_id, expires_at in rows:
            if hold_id is None:
                continue
            key = (account_id, hold_id)
            if kind == HOLD:
                if expires_at is not None and op_key in (CLIENT_OP_PREFIX + hold_id, legacy_op_key(HOLD, hold_id)):
                    self.placed[key] = int(expires_at)
            elif kind in SETTLED_STATUS and op_key == f"{kind}:{hold_id}":
                self.settled.add(key)

    def due(self, now: int) -> list[Due]:
        """Holds placed after the checkpoint, not settled since, past their expiry: oldest first."""
        settled = self.settled
        found = [Due(e, a, h) for (a, h), e in self.placed.items() if e <= now and (a, h) not in settled]
        found.sort(key=lambda d: (d.expires_at, d.account_id, d.hold_id))
        return found

    def knows(self, account_id: str, hold_id: str) -> bool:
        """The tail says more of this hold than the table: placed or settled after the checkpoint."""
        key = (account_id, hold_id)
        return key in self.settled or key in self.placed
