"""The directory's tables and statements, shared by the SQLite and MariaDB adapters.

Statements are written with ``%s`` placeholders (the SQLite adapter turns them into ``?``).
Ownership changes are compare-and-set on the epoch read: two nodes racing for a shard both
read epoch N, one UPDATE ... WHERE epoch = N matches a row, the other matches none.
"""

from __future__ import annotations

from typing import Any

from balance.directory.records import DirectoryError, NodeRecord, Ownership, ShardRecord
from balance.shards import shard_in_id

# Types are written for MariaDB; SQLite takes them as they are (dynamic types).
TABLES = {
    "directory_shards": (
        "id INT NOT NULL PRIMARY KEY, region VARCHAR(8) NOT NULL, database_url VARCHAR(1024) NOT NULL,"
        " node_id VARCHAR(64) NULL, standby_node_id VARCHAR(64) NULL"
    ),
    "directory_nodes": (
        "id VARCHAR(64) NOT NULL PRIMARY KEY, url VARCHAR(512) NOT NULL, region VARCHAR(8) NOT NULL,"
        " heartbeat_at BIGINT NOT NULL"
    ),
    "directory_ownership": (
        "shard_id INT NOT NULL PRIMARY KEY, node_id VARCHAR(64) NOT NULL, epoch BIGINT NOT NULL,"
        " lease_expires_at BIGINT NOT NULL"
    ),
    # Accounts living elsewhere than their id says (a partner moved with its subtree: one row
    # per account of it). ``version`` is the change that wrote the row (``directory_versions``):
    # nodes read the rows of versions newer than the last they read. A removed override stays
    # as a row with shard_id -1 (``NO_SHARD``), so that nodes reading changes learn of it.
    "directory_placements": (
        "account_id VARCHAR(64) NOT NULL PRIMARY KEY, shard_id INT NOT NULL, moved_at BIGINT NOT NULL,"
        " version BIGINT NOT NULL DEFAULT 0"
    ),
    # Counters bumped inside the transaction of each change they number (their row lock orders
    # the writers, so versions commit in order: a reader never sees V+1 before V).
    "directory_versions": "name VARCHAR(32) NOT NULL PRIMARY KEY, value BIGINT NOT NULL",
    # Every API key of the fleet (the columns of ``schema.KEY_COLUMNS``, and when the row was
    # last written), so that every node authenticates every key: the node owning the key's
    # shard writes it here when it creates or revokes it (and all of them at takeover); the
    # others read what changed every second. The shard's own table stays the record.
    "directory_api_keys": (
        "key_hash VARCHAR(128) NOT NULL PRIMARY KEY, account_id VARCHAR(64) NOT NULL, created_at BIGINT NOT NULL,"
        " key_id VARCHAR(40) NULL, prefix VARCHAR(16) NULL, scopes INT NULL, revoked_at BIGINT NULL,"
        " client_id VARCHAR(64) NULL, written_at BIGINT NOT NULL"
    ),
}
# Columns added since a table was first created (a directory made by an earlier version).
ADDED_COLUMNS = (("directory_placements", "version", "BIGINT NOT NULL DEFAULT 0"),)
INDEXES = (("directory_placements_version", "directory_placements", "version"),)
PLACEMENTS = "placements"  # the counter of ``directory_placements``
NO_SHARD = -1  # a removed override
ACCOUNT_ID_MAX = 64  # directory_placements.account_id
_SHARD_COLUMNS = "id, region, database_url, node_id, standby_node_id"
_OWNERSHIP_COLUMNS = "shard_id, node_id, epoch, lease_expires_at"
_KEY_COLUMNS = "key_hash, account_id, created_at, key_id, prefix, scopes, revoked_at, client_id"  # schema.KEY_COLUMNS


class Duplicate(DirectoryError):
    """An INSERT met an existing primary key."""


class SqlDirectory:
    """The directory's logic over two primitives an adapter provides."""

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement in its own transaction; the number of rows it matched."""
        raise NotImplementedError

    async def _upsert_node(self, node: NodeRecord) -> None:
        raise NotImplementedError

    async def _versioned(self, counter: str, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> int:
        """One transaction: bump ``counter``, then run each statement once per argument tuple,
        ``{version}`` in its text standing for the counter's new value; that value."""
        raise NotImplementedError

    async def _upsert_key(self, row: tuple[Any, ...], written_at_ms: int) -> None:
        raise NotImplementedError

    async def put_keys(self, rows: list[tuple[Any, ...]], now_ms: int) -> None:
        for row in rows:  # (rare: a key created or revoked, or a shard's keys at takeover)
            await self._upsert_key(row, now_ms)

    async def keys_written_since(self, after_ms: int) -> list[tuple[Any, ...]]:
        """Key rows written after ``after_ms`` (schema.KEY_COLUMNS, then written_at), oldest first."""
        return await self._query(
            f"SELECT {_KEY_COLUMNS}, written_at FROM directory_api_keys WHERE written_at > %s ORDER BY written_at",
            (after_ms,),
        )

    async def add_shard(self, shard: ShardRecord) -> None:
        try:
            await self._execute(
                f"INSERT INTO directory_shards ({_SHARD_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
                (shard.id, shard.region, shard.database_url, shard.node_id, shard.standby_node_id),
            )
        except Duplicate:
            raise DirectoryError(f"shard {shard.id} exists already") from None

    async def shards(self) -> list[ShardRecord]:
        rows = await self._query(f"SELECT {_SHARD_COLUMNS} FROM directory_shards ORDER BY id")
        return [ShardRecord(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def assign(self, shard_id: int, node_id: str, standby_node_id: str | None) -> None:
        matched = await self._execute(
            "UPDATE directory_shards SET node_id = %s, standby_node_id = %s WHERE id = %s",
            (node_id, standby_node_id, shard_id),
        )
        if matched == 0:
            raise DirectoryError(f"no shard {shard_id} (add it first: balance-service shards add)")

    async def heartbeat(self, node: NodeRecord) -> None:
        await self._upsert_node(node)

    async def nodes(self) -> list[NodeRecord]:
        rows = await self._query("SELECT id, url, region, heartbeat_at FROM directory_nodes ORDER BY id")
        return [NodeRecord(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def ownerships(self) -> list[Ownership]:
        rows = await self._query(f"SELECT {_OWNERSHIP_COLUMNS} FROM directory_ownership ORDER BY shard_id")
        return [Ownership(int(r[0]), r[1], int(r[2]), int(r[3])) for r in rows]

    async def acquire(self, shard_id: int, node_id: str, now_ms: int, lease_ms: int) -> Ownership | None:
        rows = await self._query(
            f"SELECT {_OWNERSHIP_COLUMNS} FROM directory_ownership WHERE shard_id = %s", (shard_id,)
        )
        expires = now_ms + lease_ms
        if not rows:
            try:
                await self._execute(
                    f"INSERT INTO directory_ownership ({_OWNERSHIP_COLUMNS}) VALUES (%s, %s, 1, %s)",
                    (shard_id, node_id, expires),
                )
            except Duplicate:
                return None  # another node took it first
            return Ownership(shard_id, node_id, 1, expires)
        current = Ownership(int(rows[0][0]), rows[0][1], int(rows[0][2]), int(rows[0][3]))
        if current.node_id != node_id and current.lease_expires_at_ms >= now_ms:
            return None
        matched = await self._execute(
            "UPDATE directory_ownership SET node_id = %s, epoch = epoch + 1, lease_expires_at = %s"
            " WHERE shard_id = %s AND epoch = %s",
            (node_id, expires, shard_id, current.epoch),
        )
        return Ownership(shard_id, node_id, current.epoch + 1, expires) if matched == 1 else None

    async def renew(self, ownership: Ownership, now_ms: int, lease_ms: int) -> Ownership | None:
        expires = now_ms + lease_ms
        matched = await self._execute(
            "UPDATE directory_ownership SET lease_expires_at = %s WHERE shard_id = %s AND epoch = %s AND node_id = %s",
            (expires, ownership.shard_id, ownership.epoch, ownership.node_id),
        )
        if matched != 1:
            return None
        return Ownership(ownership.shard_id, ownership.node_id, ownership.epoch, expires)

    async def release(self, ownership: Ownership) -> None:
        await self._execute(
            "UPDATE directory_ownership SET lease_expires_at = 0 WHERE shard_id = %s AND epoch = %s AND node_id = %s",
            (ownership.shard_id, ownership.epoch, ownership.node_id),
        )

    async def set_placement(self, account_id: str, shard_id: int, now_ms: int) -> None:
        await self.set_placements({account_id: shard_id}, now_ms)

    async def set_placements(self, placements: dict[str, int], now_ms: int) -> int:
        """All or none: every account of ``placements`` lives on its shard from this version on."""
        if not placements:
            raise DirectoryError("no placement to set")
        known = {shard.id for shard in await self.shards()}  # (shards are never removed)
        for account_id, shard_id in placements.items():
            _check_account(account_id)
            if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id not in known:
                raise DirectoryError(f"no shard {shard_id!r} in the directory (for {account_id})")
        rows = [(account_id, shard_id, now_ms) for account_id, shard_id in placements.items()]
        sql = (
            "REPLACE INTO directory_placements (account_id, shard_id, moved_at, version) VALUES (%s, %s, %s, {version})"
        )
        return await self._versioned(PLACEMENTS, [(sql, rows)])

    async def remove_placements(self, account_ids: list[str], now_ms: int) -> int:
        """All or none: these accounts live where their ids say again (those without an
        override are left alone)."""
        if not account_ids:
            raise DirectoryError("no placement to remove")
        for account_id in account_ids:
            _check_account(account_id)
        sql = (
            f"UPDATE directory_placements SET shard_id = {NO_SHARD}, moved_at = %s, version = {{version}}"
            f" WHERE account_id = %s AND shard_id <> {NO_SHARD}"
        )
        return await self._versioned(PLACEMENTS, [(sql, [(now_ms, account_id) for account_id in account_ids])])

    async def placements_since(self, version: int) -> tuple[int, list[tuple[str, int | None]]]:
        """The overrides changed after ``version`` (shard None: removed), oldest first, and the
        version they bring the reader to."""
        rows = await self._query(
            "SELECT account_id, shard_id, version FROM directory_placements WHERE version > %s ORDER BY version",
            (version,),
        )
        changes = [(str(r[0]), None if int(r[1]) == NO_SHARD else int(r[1])) for r in rows]
        return (int(rows[-1][2]) if rows else version), changes

    async def placement_of(self, account_id: str) -> int | None:
        rows = await self._query("SELECT shard_id FROM directory_placements WHERE account_id = %s", (account_id,))
        return int(rows[0][0]) if rows and int(rows[0][0]) != NO_SHARD else None


def _check_account(account_id: object) -> None:
    """An override names an account id of this service (``REGION-SHARD-...``, at most 64 characters)."""
    if not isinstance(account_id, str) or len(account_id) > ACCOUNT_ID_MAX or shard_in_id(account_id) is None:
        raise DirectoryError(f"{str(account_id)[:80]!r} is not an account id of this service")
