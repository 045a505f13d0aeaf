"""The HTTP event feed (``GET /v1/events``): the same envelopes as the brokers get, read from
the shard databases after a cursor, for whoever may read their accounts.

The cursor is one journal seq per shard (``"120.97"``: shard 0 read up to 120, shard 1 up to
97). A request reads each shard's rows after its position, in seq order, with a fresh event
stream (what a stream learns holds only from where it started). Events of one row are never
split across pages. Rows the key may not see still move its cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from balance.domain.moves import barrier_of
from balance.events.stream import EventStream, Published
from balance.metrics import Metrics
from balance.relay.page import EventSource
from balance.storage.base import StorageError
from balance.storage.schema import JOURNAL_COLUMNS

JOURNAL_SEQ, JOURNAL_KIND, JOURNAL_DESCRIPTION = (JOURNAL_COLUMNS.index(n) for n in ("seq", "kind", "description"))
Visible = Callable[[str], bool]  # account id -> may the caller see its events
log = logging.getLogger("balance.relay")
PRUNE_EVERY_S = 60.0  # no broker: how often the outbox rows past retention are looked for


class CursorError(ValueError):
    """A cursor this service did not give out."""


class CursorExpired(Exception):
    """A position below a shard's pruned range: outbox rows after it are gone (retention).
    ``oldest``: the cursor the feed can serve completely from now on."""

    def __init__(self, oldest: list[int]) -> None:
        super().__init__(format_cursor(oldest))
        self.oldest = oldest


def parse_cursor(text: str | None, shards: int) -> list[int]:
    if not text:
        return [0] * shards
    parts = text.split(".")
    if len(parts) != shards or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise CursorError("after is not a cursor this service gave out")
    return [int(p) for p in parts]


def format_cursor(positions: Sequence[int]) -> str:
    return ".".join(str(p) for p in positions)


class EventsFeed:
    """One reader per shard (serialised: one connection each)."""

    def __init__(
        self, sources: Sequence[EventSource], sinks: Sequence[str] = (), retention_s: float | None = None
    ) -> None:
        self.sources = list(sources)
        self.sinks = tuple(sinks)  # the brokers relayed to ("amqp", "nats"): their lag is observed here too
        # Without a broker the feed prunes the outbox itself (``run_pruner``); with one, the relay does
        # (only what every broker confirmed): None here.
        self.retention_s = None if self.sinks else retention_s
        self.prune_every_s, self.clock = PRUNE_EVERY_S, time.time
        self.prune_passes = 0  # passes over every shard done (tests wait for one)
        self._locks = [asyncio.Lock() for _ in self.sources]

    async def observe(self, metrics: Metrics) -> None:
        """Each relay's cursor and lag, read from the shard databases (so that the service's own
        /metrics shows them wherever the relay runs). A shard that does not answer is skipped."""
        now = time.time()
        for shard, source in enumerate(self.sources):
            for sink in self.sinks:
                try:
                    async with self._locks[shard]:
                        cursor = await source.cursor(sink)
                        oldest = await source.oldest_after(cursor)
                except StorageError:
                    continue
                labels = (str(shard), sink)
                metrics.events_published_seq.labels(*labels).set(cursor)
                metrics.events_lag_seconds.labels(*labels).set(0.0 if oldest is None else max(0.0, now - oldest / 1e6))

    async def read(
        self, positions: list[int], limit: int, visible: Visible, *, fresh: bool = False
    ) -> tuple[list[Published], list[int]]:
        """Up to ``limit`` events after ``positions`` (shard by shard, each in seq order) and the
        positions after them. A position below its shard's pruned range raises CursorExpired;
        ``fresh`` (no cursor given): such a shard starts at the oldest position it keeps."""
        found: list[Published] = []
        after = list(positions)
        for shard, source in enumerate(self.sources):
            room = limit - len(found)
            if room <= 0:
                break
            stream = EventStream(shard)
            async with self._locks[shard]:
                page = await source.read_page(after[shard], room, stream.missing)
                if page.pruned > after[shard] and fresh:
                    after[shard] = page.pruned
                    page = await source.read_page(after[shard], room, stream.missing)
            if page.pruned > after[shard]:  # in the page's own snapshot: rows after the cursor are gone
                raise CursorExpired(await self._oldest(positions))
            if not page.journal and not page.outbox:
                continue
            events = stream.build(page.journal, page.outbox, page.accounts, page.later_updates, page.placements)
            held = _held_at(page.journal, after)
            if held is not None:  # a subtree arrived here: its old shard's events come first
                events = [event for event in events if event.seq < held]
            kept, last = _fit([e for e in events if visible(e.account_id)], room)
            found += kept
            if last is None:
                last = page.last_seq if held is None else held - 1
            after[shard] = last
        return found, after

    async def _oldest(self, positions: list[int]) -> list[int]:
        oldest = list(positions)
        for shard, source in enumerate(self.sources):
            async with self._locks[shard]:
                oldest[shard] = max(oldest[shard], await source.pruned())
        return oldest

    async def prune(self, before_us: int, rows: int) -> int:
        """One slice of each shard's outbox rows created before ``before_us`` (no broker: no
        relay prunes them); the rows deleted."""
        deleted = 0
        for shard, source in enumerate(self.sources):
            async with self._locks[shard]:
                deleted += await source.prune(2**62, before_us, rows)
        return deleted

    async def _prune_shard(self, shard: int, before_us: int) -> None:
        from balance.relay.sources import prune_slices

        source, lock = self.sources[shard], self._locks[shard]

        async def one_slice(rows: int) -> int:  # under the shard's lock: the feed's reads share the connection
            async with lock:
                return await source.prune(2**62, before_us, rows)

        await prune_slices(one_slice)

    async def run_pruner(self) -> None:
        """No broker: every ``prune_every_s``, the outbox rows older than the retention are
        deleted, a slice (one short transaction per shard) at a time with a pause between, off
        the writer's commit path. Journal rows are never deleted. Until cancelled."""
        if self.retention_s is None:
            return
        while True:
            try:
                before = int((self.clock() - self.retention_s) * 1e6)
                for shard in range(len(self.sources)):
                    await self._prune_shard(shard, before)
                self.prune_passes += 1
            except StorageError as exc:
                log.warning("events: pruning the outbox failed (tried again later): %s", exc)
            await asyncio.sleep(self.prune_every_s)

    async def close(self) -> None:
        for source in self.sources:
            await source.close()


def _held_at(journal: list[tuple], after: list[int]) -> int | None:  # type: ignore[type-arg]
    """The seq of the first row of a subtree's arrival (``moves.barrier_of``) whose old shard
    has not been read up to its leaving yet: nothing from there on is given out now."""
    for row in journal:
        barrier = barrier_of(row[JOURNAL_KIND], row[JOURNAL_DESCRIPTION])
        if barrier is not None and barrier[0] < len(after) and after[barrier[0]] < barrier[1]:
            return int(row[JOURNAL_SEQ])
    return None


def _fit(events: list[Published], room: int) -> tuple[list[Published], int | None]:
    """At most ``room`` events, never splitting one row's (one seq's) events; the seq read up
    to when cut short (None: all of them)."""
    if len(events) <= room:
        return events, None
    cut = room
    while cut > 0 and events[cut].seq == events[cut - 1].seq:
        cut -= 1
    if cut == 0:  # the first row alone has more than room: it goes whole
        cut = next((i for i, e in enumerate(events) if e.seq != events[0].seq), len(events))
    return events[:cut], events[cut - 1].seq
