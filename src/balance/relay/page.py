"""What a reader of a shard database gives the event stream: a page of rows after a cursor,
and the port of such a reader (``sources`` has the adapters). No storage import here: the
compiled API reaches the feed through this module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Row = tuple[Any, ...]

Missing = Callable[[list[Row]], tuple[set[str], set[tuple[str, str]]]]  # ``EventStream.missing``


@dataclass(slots=True)
class Page:
    """Rows after a cursor (journal and outbox cut at the same seq) and what the stream asked for."""

    journal: list[Row] = field(default_factory=list)
    outbox: list[Row] = field(default_factory=list)
    accounts: list[Row] = field(default_factory=list)
    later_updates: list[Row] = field(default_factory=list)
    placements: list[Row] = field(default_factory=list)
    pruned: int = 0  # outbox rows up to this seq may have been pruned (read in the page's snapshot)

    @property
    def last_seq(self) -> int:
        return max(self.journal[-1][0] if self.journal else 0, self.outbox[-1][0] if self.outbox else 0)

    @property
    def oldest_at(self) -> int | None:
        times = [rows[0][c] for rows, c in ((self.journal, 15), (self.outbox, 4)) if rows]
        return min(times) if times else None


class EventSource(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def read_page(self, after: int, limit: int, missing: Missing) -> Page: ...
    async def cursor(self, sink: str) -> int: ...
    async def save_cursor(self, sink: str, seq: int, prune_seq: int, prune_before_us: int) -> None: ...
    async def oldest_after(self, after: int) -> int | None: ...
    async def prune(self, up_to: int, before_us: int, rows: int) -> int: ...
    async def pruned(self) -> int: ...
