"""The MariaDB read path: recovery scans, look-ups of old holds and first outcomes, history
and children, through a small pool of autocommit connections (never behind a commit)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncmy

from balance.domain.holds import (
    HOLD_JOURNAL_ACCOUNT_ID,
    HOLD_JOURNAL_HOLD_ID,
    hold_from_journal,
    placed_before_expiries,
)
from balance.domain.ids import hold_journal_keys
from balance.domain.model import ACCOUNT_BALANCE, ACCOUNT_EXHAUSTED, HOLD_ACCOUNT_ID, HOLD_ID
from balance.storage import schema
from balance.storage.base import LoadedShard, Row, StorageError, StoredOperation
from balance.storage.mariadb_driver import DRIVER_ERRORS, column_list, is_server_error, translate

T = TypeVar("T")
_LOOKUP_CHUNK = 500  # keys per look-up query

# A page of pending holds after (expires_at, account_id, id), in primary key order (the table
# holds pending holds only; ``status`` filters an earlier version's finished rows).
# ``expires_at >= last`` bounds the range from below, and the index is named: with the OR alone
# (or without the hint) MariaDB read the index from the first pending hold on every page, 1.3 s
# a page halfway through 10 million (35 ms this way).
PENDING_HOLDS_PAGE = (
    f"SELECT {column_list(schema.HOLD_COLUMNS)} FROM holds FORCE INDEX (PRIMARY)"
    " WHERE status = 'pending' AND expires_at >= %s"
    " AND (expires_at > %s OR (expires_at = %s AND (account_id > %s OR (account_id = %s AND id > %s))))"
    " ORDER BY expires_at, account_id, id LIMIT %s"
)


class MariaDbReads:
    """Part of ``MariaDbShardStorage`` (a mixin): every read. The pool is opened by ``open``."""

    _pool: asyncmy.Pool | None
    _open: bool

    if TYPE_CHECKING:  # what the other parts of MariaDbShardStorage provide

        def _check_open(self) -> None: ...
        async def _settle_in_doubt(self, *, every_branch_of_ours: bool = False) -> None: ...

    async def _read(self, fn: Callable[[asyncmy.Connection], Awaitable[T]]) -> T:
        self._check_open()
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self!r} is closed")
        try:
            async with pool.acquire() as conn:
                try:
                    return await fn(conn)
                except BaseException as exc:
                    if not is_server_error(exc):
                        conn.close()  # the pool discards closed connections
                    raise
        except DRIVER_ERRORS as exc:
            raise translate(exc, "read") from exc
        except RuntimeError as exc:  # "Cannot acquire connection after closing pool"
            if not self._open:
                raise StorageError(f"{self!r} is closed") from exc
            raise

    @staticmethod
    async def _fetch(conn: asyncmy.Connection, sql: str, args: Any = None) -> list[Row]:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def load(self) -> LoadedShard:
        async def read(conn: asyncmy.Connection) -> LoadedShard:
            # One snapshot for the three reads. On failure the pool discards the connection
            # (it is closed by _read, and a connection released inside a transaction is too).
            await self._fetch(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            accounts = await self._fetch(conn, f"SELECT {column_list(schema.ACCOUNT_COLUMNS)} FROM accounts")
            holds = await self._fetch(
                conn, f"SELECT {column_list(schema.HOLD_COLUMNS)} FROM holds WHERE status = 'pending'"
            )
            last = await self._fetch(
                conn,
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM journal), 0),"
                " COALESCE((SELECT MAX(seq) FROM outbox), 0))",
            )
            await self._fetch(conn, "COMMIT")
            accounts = [
                (
                    *row[:ACCOUNT_BALANCE],
                    int(row[ACCOUNT_BALANCE]),
                    *row[ACCOUNT_BALANCE + 1 : ACCOUNT_EXHAUSTED],
                    bool(row[ACCOUNT_EXHAUSTED]),
                    *row[ACCOUNT_EXHAUSTED + 1 :],
                )
                for row in accounts
            ]  # fmt: skip  (balance: DECIMAL(39,0) comes back as a Decimal)
            return LoadedShard(accounts, holds, int(last[0][0]) + 1)

        return await self._read(read)

    async def scan_accounts(self, after_id: str, limit: int) -> list[Row]:
        sql = f"SELECT {column_list(schema.ACCOUNT_COLUMNS)} FROM accounts WHERE id > %s ORDER BY id LIMIT %s"
        # ``exhausted`` comes back as 0/1 and ``balance`` as a Decimal: Account.from_row makes them
        # a bool and an int (not a second pass here).
        return await self._read(lambda conn: self._fetch(conn, sql, (after_id, limit)))

    async def scan_pending_holds(self, after: tuple[int, str, str], limit: int) -> list[Row]:
        expires_at, account_id, hold_id = after
        args = (expires_at, expires_at, expires_at, account_id, account_id, hold_id, limit)
        return await self._read(lambda conn: self._fetch(conn, PENDING_HOLDS_PAGE, args))

    async def checkpoint_seq(self) -> int:
        sql = "SELECT value FROM meta WHERE name = %s"
        rows = await self._read(lambda conn: self._fetch(conn, sql, (schema.CHECKPOINT_META_KEY,)))
        return int(rows[0][0]) if rows else 0

    async def scan_recovery_journal(self, after_seq: int, limit: int) -> list[Row]:
        sql = schema.recovery_journal_query("%s")
        return await self._read(lambda conn: self._fetch(conn, sql, (after_seq, limit)))

    async def pending_transfers(self) -> list[Row]:
        sql = f"SELECT {column_list(schema.TRANSFER_COLUMNS)} FROM transfers_pending ORDER BY created_at"
        return await self._read(lambda conn: self._fetch(conn, sql))

    async def max_seq(self) -> int:
        await self._settle_in_doubt()
        rows = await self._read(
            lambda conn: self._fetch(
                conn,
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM journal), 0),"
                " COALESCE((SELECT MAX(seq) FROM outbox), 0))",
            )
        )
        return int(rows[0][0])

    async def load_keys(self) -> list[Row]:
        return await self._read(
            lambda conn: self._fetch(conn, f"SELECT {column_list(schema.KEY_COLUMNS)} FROM api_keys")
        )

    async def lookup(
        self, op_keys: list[tuple[str, str]], hold_keys: list[tuple[str, str]]
    ) -> tuple[list[StoredOperation], list[Row]]:
        """Batched: one query per ``_LOOKUP_CHUNK`` keys. Results come in the order of the keys asked."""
        if not op_keys and not hold_keys:
            self._check_open()
            return [], []

        async def read(conn: asyncmy.Connection) -> tuple[list[StoredOperation], list[Row]]:
            found_ops: dict[tuple[str, str], Row] = {}
            for start in range(0, len(op_keys), _LOOKUP_CHUNK):
                chunk = list(dict.fromkeys(op_keys[start : start + _LOOKUP_CHUNK]))
                sql = (
                    "SELECT account_id, op_key, fingerprint, status, result FROM journal"
                    " WHERE (op_key, account_id) IN (" + ",".join(["(%s,%s)"] * len(chunk)) + ")"
                )  # in the index's order (``journal_key``)
                for row in await self._fetch(conn, sql, [v for a, k in chunk for v in (k, a)]):
                    found_ops[(row[0], row[1])] = row
            found_holds: dict[tuple[str, str], Row] = {}
            for start in range(0, len(hold_keys), _LOOKUP_CHUNK):
                chunk = list(dict.fromkeys(hold_keys[start : start + _LOOKUP_CHUNK]))
                # The journal is the record of a hold: its rows rebuild it.
                wanted = [(a, key) for a, h in chunk for key in hold_journal_keys(h)]
                sql = (
                    f"SELECT {column_list(schema.HOLD_JOURNAL_COLUMNS)} FROM journal"
                    " WHERE (op_key, account_id) IN (" + ",".join(["(%s,%s)"] * len(wanted)) + ")"
                    " AND status < 300 ORDER BY seq"
                )
                per_hold: dict[tuple[str, str], list[Row]] = {}
                for row in await self._fetch(conn, sql, [v for a, k in wanted for v in (k, a)]):
                    per_hold.setdefault((row[HOLD_JOURNAL_ACCOUNT_ID], row[HOLD_JOURNAL_HOLD_ID]), []).append(row)
                for key, rows in per_hold.items():
                    if (rebuilt := hold_from_journal(rows)) is not None:
                        found_holds[key] = rebuilt
                # An earlier version's holds: the table has them, if anywhere (``placed_before_expiries``).
                older = [
                    key for key, rows in per_hold.items() if key not in found_holds and placed_before_expiries(rows)
                ]
                if older:
                    sql = (
                        f"SELECT {column_list(schema.HOLD_COLUMNS)} FROM holds"
                        " WHERE (account_id, id) IN (" + ",".join(["(%s,%s)"] * len(older)) + ")"
                    )
                    for row in await self._fetch(conn, sql, [v for key in older for v in key]):
                        found_holds[(row[HOLD_ACCOUNT_ID], row[HOLD_ID])] = row
            operations = [
                StoredOperation(account_id, op_key, op[2], op[3], op[4])
                for account_id, op_key in op_keys
                if (op := found_ops.get((account_id, op_key))) is not None
            ]
            holds = [hold for key in hold_keys if (hold := found_holds.get(key)) is not None]
            return operations, holds

        return await self._read(read)

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]:
        sql, args = schema.history_query("%s", account_id, limit, before_seq, since, until)
        return await self._read(lambda conn: self._fetch(conn, sql, args))

    async def move_records(self, account_ids: list[str]) -> list[Row]:
        async def read(conn: asyncmy.Connection) -> list[Row]:
            rows: list[Row] = []
            for start in range(0, len(account_ids), schema.MOVE_RECORDS_CHUNK):
                chunk = account_ids[start : start + schema.MOVE_RECORDS_CHUNK]
                rows += await self._fetch(conn, schema.move_records_query("%s", len(chunk)), chunk)
            return rows

        return await self._read(read)

    async def get_hold(self, account_id: str, hold_id: str) -> Row | None:
        _, holds = await self.lookup([], [(account_id, hold_id)])
        return holds[0] if holds else None

    async def unfinished_moves(self) -> list[tuple[Row, bytes]]:
        heads_sql = schema.MOVES_UNFINISHED.format(columns=",".join(schema.MOVE_COLUMNS))
        parts_sql = schema.MOVE_PARTS.format(p="%s")

        async def read(conn: asyncmy.Connection) -> list[tuple[Row, bytes]]:
            found = []
            await self._fetch(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")  # record and parts
            for head in await self._fetch(conn, heads_sql, ()):
                parts = await self._fetch(conn, parts_sql, (head[0],))
                found.append((tuple(head), b"".join(bytes(row[0]) for row in parts)))
            await self._fetch(conn, "COMMIT")
            return found

        return await self._read(read)

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]:
        sql = "SELECT id FROM accounts WHERE parent_id = %s AND id > %s ORDER BY id LIMIT %s"
        rows = await self._read(lambda conn: self._fetch(conn, sql, (parent_id, after_id or "", int(limit))))
        return [row[0] for row in rows]
