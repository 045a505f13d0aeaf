"""One shard's relay to one broker: the rows after its durable cursor, published in order.

At least once: the cursor moves (in the shard's database) only after the broker confirmed
every event up to it, so a crash or restart publishes again at most what came after the last
saved cursor (consumers drop repeats by event id; NATS drops them itself by ``Nats-Msg-Id``).
While the broker is away the relay backs off and tries the same page again; the money path
never waits for it. Outbox rows are deleted only once confirmed and older than the retention.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from balance.domain.moves import barrier_of
from balance.engine.recovery import Backoff
from balance.events.stream import EventStream
from balance.metrics import Metrics
from balance.relay.page import EventSource
from balance.relay.sink import Confirmation, Sink, SinkError
from balance.storage.base import StorageError
from balance.storage.schema import JOURNAL_COLUMNS

log = logging.getLogger("balance.relay")

JOURNAL_KIND, JOURNAL_DESCRIPTION = JOURNAL_COLUMNS.index("kind"), JOURNAL_COLUMNS.index("description")
PAGE_ROWS = 1000
IDLE_POLL_S = 0.02  # caught up (a page short of full): how long until the shard database is asked again
CURSOR_SAVE_S = 1.0  # the cursor is written at most this often (and at a clean stop)
OUTBOX_RETENTION_S = 86_400.0


PAGES_IN_FLIGHT = 4  # pages sent while the oldest waits for its confirmation (a broker syncs to disk in rounds)


@dataclass(slots=True)
class _Sent:
    last_seq: int
    events: int
    oldest_at: int  # the page's oldest row (microseconds): the lag while it waits
    confirmation: Confirmation


def _done() -> Confirmation:
    done: Confirmation = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class ShardRelay:
    def __init__(
        self,
        shard: int,
        source: EventSource,
        sink: Sink,
        metrics: Metrics,
        *,
        page_rows: int = PAGE_ROWS,
        pages_in_flight: int = PAGES_IN_FLIGHT,
        idle_poll_s: float = IDLE_POLL_S,
        cursor_save_s: float = CURSOR_SAVE_S,
        retention_s: float = OUTBOX_RETENTION_S,
        backoff: Backoff | None = None,
    ) -> None:
        self.shard, self.source, self.sink = shard, source, sink
        self.page_rows, self.idle_poll_s, self.cursor_save_s, self.retention_s = (
            page_rows, idle_poll_s, cursor_save_s, retention_s,
        )  # fmt: skip
        self.backoff = backoff or Backoff()
        self.pages_in_flight = pages_in_flight
        labels = (str(shard), sink.name)
        self._published = metrics.events_published.labels(*labels)
        self._lag = metrics.events_lag_seconds.labels(*labels)
        self._cursor_gauge = metrics.events_published_seq.labels(*labels)
        self._failures = metrics.events_sink_failures.labels(*labels)
        self.cursor = 0  # published and confirmed up to here
        self.saved = 0  # ... and written to the shard's database up to here
        self.failures = 0  # consecutive failed attempts
        # The relays of this shard to every sink: an outbox row is pruned only once all published it.
        self.peers: list[ShardRelay] = [self]
        self.stopping = False  # set by ``stop_relays``: the loop ends at its next turn
        # The other shards' relays to the same broker (shard -> relay), when they run in this
        # process: a moved subtree's events here wait for its old shard's (``_held_at``).
        self.others: dict[int, ShardRelay] = {}
        # The other shards' databases (shard -> a reader), when their relays run elsewhere (another
        # process or machine): their durable cursor for this sink says how far they published.
        self.barrier_sources: dict[int, EventSource] = {}
        self._durable: dict[int, int] = {}  # shard -> the highest durable cursor read there

    async def run(self) -> None:
        """Until cancelled (``stop`` saves the cursor)."""
        while True:
            try:
                self.cursor = self.saved = await self.source.cursor(self.sink.name)
                break
            except StorageError as exc:
                await self._wait("read the cursor", exc)
        self._cursor_gauge.set(self.cursor)
        inflight: deque[_Sent] = deque()  # pages sent and not yet confirmed, oldest first
        try:
            await self._relay(inflight)
        finally:
            for sent in inflight:  # not confirmed: the next start sends them again from the saved cursor
                sent.confirmation.cancel()

    async def _relay(self, inflight: deque[_Sent]) -> None:
        stream = EventStream(self.shard)
        saved_at = time.monotonic()
        task = asyncio.current_task()
        read_to = self.cursor  # pages are read and sent up to here (ahead of the confirmed cursor)
        while not self.stopping:
            if task is not None and task.cancelling():  # a client library may swallow a cancel: not this loop
                raise asyncio.CancelledError
            try:
                while inflight and inflight[0].confirmation.done():
                    self._confirmed(inflight.popleft())
                if len(inflight) >= self.pages_in_flight:
                    await asyncio.wait([inflight[0].confirmation])
                    continue
                page = await self.source.read_page(read_to, self.page_rows, stream.missing)
                held = await self._held_at(page.journal) if self.others or self.barrier_sources else None
                if held is not None:  # a subtree arrived here: its old shard's events go first
                    page.journal = [row for row in page.journal if row[0] < held]
                    page.outbox = [row for row in page.outbox if row[0] < held]
                    if not page.journal and not page.outbox:
                        # Held, with what it confirmed saved all the same: the old shard's relay may
                        # itself wait for this cursor (a partner moved there and back).
                        while inflight and inflight[0].confirmation.done():
                            self._confirmed(inflight.popleft())
                        if self.cursor != self.saved and time.monotonic() - saved_at >= self.cursor_save_s:
                            await self.save()
                            saved_at = time.monotonic()
                        await asyncio.sleep(self.idle_poll_s)
                        continue
                oldest = page.oldest_at
                # A page short of full: the relay has caught up with the writer (no read again at once,
                # which would come back empty: at a low rate every wake is one read, not two).
                behind = len(page.journal) >= self.page_rows or len(page.outbox) >= self.page_rows
                if oldest is not None:
                    events = stream.build(page.journal, page.outbox, page.accounts, page.later_updates, page.placements)
                    confirmation = await self.sink.send(self.shard, events) if events else _done()
                    inflight.append(_Sent(page.last_seq, len(events), oldest, confirmation))
                    read_to = page.last_seq
                unconfirmed = inflight[0].oldest_at if inflight else None
                self._lag.set(0.0 if unconfirmed is None else max(0.0, time.time() - unconfirmed / 1e6))
                if not behind:  # caught up: the next rows gather meanwhile (confirmations arrive too)
                    if not inflight:
                        self.failures = 0
                    await asyncio.sleep(self.idle_poll_s)
                if self.cursor != self.saved and time.monotonic() - saved_at >= self.cursor_save_s:
                    await self.save()
                    saved_at = time.monotonic()
            except (SinkError, StorageError) as exc:
                for sent in inflight:  # sent but not confirmed: sent again from the cursor
                    sent.confirmation.cancel()
                inflight.clear()
                read_to = self.cursor
                stream = EventStream(self.shard)  # what it learned past the cursor is not published
                self._failures.inc()
                await self._wait("publish", exc)

    async def _held_at(self, journal: list[tuple]) -> int | None:  # type: ignore[type-arg]
        """The seq of the first row of a subtree's arrival whose old shard's relay to the same
        broker has not confirmed its events up to the leaving yet (``moves.barrier_of``): as
        that relay says, in this process; else as its cursor saved in that shard's database
        says (read again while it is behind; raises StorageError if it cannot be read)."""
        for row in journal:
            barrier = barrier_of(row[JOURNAL_KIND], row[JOURNAL_DESCRIPTION])
            if barrier is None:
                continue
            shard, leaving = barrier
            other = self.others.get(shard)
            if other is not None:
                if other.cursor < leaving:
                    return int(row[0])
                continue
            source = self.barrier_sources.get(shard)
            if source is None or self._durable.get(shard, 0) >= leaving:
                continue
            self._durable[shard] = max(self._durable.get(shard, 0), await source.cursor(self.sink.name))
            if self._durable[shard] < leaving:
                return int(row[0])
        return None

    def _confirmed(self, sent: _Sent) -> None:
        """The oldest page in flight is confirmed (or raises its SinkError): the cursor moves past it."""
        sent.confirmation.result()
        self.cursor = sent.last_seq
        self._published.inc(sent.events)
        self._cursor_gauge.set(self.cursor)
        self.failures = 0

    async def save(self) -> None:
        """The cursor into the shard's database, and the outbox rows past retention pruned."""
        prune_before = int((time.time() - self.retention_s) * 1e6)
        confirmed_by_all = min([self.cursor, *(peer.saved for peer in self.peers if peer is not self)])
        await self.source.save_cursor(self.sink.name, self.cursor, confirmed_by_all, prune_before)
        self.saved = self.cursor

    async def _wait(self, what: str, exc: Exception) -> None:
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("events shard %s -> %s: %s failed (attempt %d), retrying in %.2fs: %s",
                        self.shard, self.sink.name, what, self.failures, delay, exc)  # fmt: skip
        await self.backoff.sleep(delay)
        # Refresh the lag while away: the oldest unpublished event keeps ageing.
        try:
            oldest = await self.source.oldest_after(self.cursor)
        except StorageError:
            return
        self._lag.set(0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6))
