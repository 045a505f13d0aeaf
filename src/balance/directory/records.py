"""The directory's records and its port (what nodes and the operator CLI ask of it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """A shard: its region, its database, the node the operator assigned it to and the
    standby that takes it over when that node's lease expires."""

    id: int
    region: str
    database_url: str
    node_id: str | None
    standby_node_id: str | None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    url: str
    region: str
    heartbeat_at_ms: int


@dataclass(frozen=True, slots=True)
class Ownership:
    """Who writes a shard: ``epoch`` grows at every takeover (the fencing token written into
    the shard database); the owner renews ``lease_expires_at_ms`` or loses the shard."""

    shard_id: int
    node_id: str
    epoch: int
    lease_expires_at_ms: int


class ShardDirectory(Protocol):
    """One directory database. Every method may raise ``DirectoryError``."""

    async def open(self) -> None:
        """Connect; create the tables if missing."""

    async def close(self) -> None: ...

    async def add_shard(self, shard: ShardRecord) -> None:
        """Record a new shard; raises ``DirectoryError`` if the id is taken."""

    async def shards(self) -> list[ShardRecord]: ...

    async def assign(self, shard_id: int, node_id: str, standby_node_id: str | None) -> None:
        """The operator's placement: ``node_id`` should own the shard, ``standby_node_id`` may take it over."""

    async def heartbeat(self, node: NodeRecord) -> None:
        """Record (or refresh) a node: its URL, region and the time it last spoke."""

    async def nodes(self) -> list[NodeRecord]: ...

    async def ownerships(self) -> list[Ownership]: ...

    async def acquire(self, shard_id: int, node_id: str, now_ms: int, lease_ms: int) -> Ownership | None:
        """Take the shard with a new epoch (compare-and-set on the epoch read) if its lease is
        free or expired, or already ``node_id``'s; None if another node holds a live lease."""

    async def renew(self, ownership: Ownership, now_ms: int, lease_ms: int) -> Ownership | None:
        """Extend the lease if the epoch is still ``ownership.epoch``; None: the shard was taken."""

    async def release(self, ownership: Ownership) -> None:
        """Give the shard up (a clean stop): the lease ends now, the epoch stays."""

    async def put_keys(self, rows: list[tuple[Any, ...]], now_ms: int) -> None:
        """Write API key rows (``schema.KEY_COLUMNS``), stamped ``now_ms``."""

    async def keys_written_since(self, after_ms: int) -> list[tuple[Any, ...]]:
        """Key rows written after ``after_ms``: KEY_COLUMNS and then the time written."""

    async def set_placement(self, account_id: str, shard_id: int, now_ms: int) -> None:
        """``account_id`` lives on ``shard_id``, whatever its id says (``set_placements`` of one)."""

    async def set_placements(self, placements: dict[str, int], now_ms: int) -> int:
        """Overrides, all written in one transaction (or none: an unknown shard, an id not of
        this service): each account lives on its shard from the version returned on. A moved
        partner's subtree is one override per account (a node's look-up stays one dict get)."""

    async def remove_placements(self, account_ids: list[str], now_ms: int) -> int:
        """All in one transaction: these accounts live where their ids say again; the version."""

    async def placements_since(self, version: int) -> tuple[int, list[tuple[str, int | None]]]:
        """The overrides changed after ``version`` ((account, shard), None: removed), oldest
        first, and the version read up to (``version`` itself when nothing changed). -1 reads
        every row (those written before versions existed are version 0)."""

    async def placement_of(self, account_id: str) -> int | None:
        """The override for ``account_id``, if any."""


class DirectoryError(Exception):
    """The directory failed, is unreachable, or refused a change (e.g. a shard id taken)."""
