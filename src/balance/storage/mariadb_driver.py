"""What the MariaDB modules share of the driver: the errors it raises, told apart and
translated to ``StorageError`` at this edge, and how a column list is quoted."""

from __future__ import annotations

import asyncio
import re

from asyncmy import errors as mysql_errors

from balance.storage.base import FENCE_META_KEY, DuplicateOperation, Fenced, StorageError

_ER_DUP_ENTRY = 1062
_ER_CONSTRAINT_FAILED = 4025  # a CHECK constraint: the fence guard's
FENCE_CONSTRAINT = "fenced_by_a_newer_owner"
# A table that never holds a row: the guard inserts one only when the epoch is not ours, and
# the CHECK refuses it (the error stops the packet; the transaction is rolled back).
FENCE_TRIP_DDL = f"fence_trip (epoch BIGINT NOT NULL, CONSTRAINT {FENCE_CONSTRAINT} CHECK (epoch IS NULL))"


def fence_guard(epoch: int) -> str:
    """The statement that opens every commit of an owner: it reads the fence row, which takes
    a shared lock on it (an INSERT ... SELECT locks the rows it reads: a takeover's UPDATE
    waits for the commits in progress, and they for it), and fails the transaction, inside
    the server, when the row holds another epoch. One plain statement in the same packet as
    the batch's rows: no round trip of its own. (An ``IF ... SIGNAL`` compound statement did
    the same at +20% per small commit: MariaDB builds a stored program for each.)"""
    return (
        f"INSERT INTO fence_trip (epoch) SELECT value FROM meta"
        f" WHERE name = '{FENCE_META_KEY}' AND value <> {int(epoch)}"
    )


_DUPLICATE_OP_KEY = re.compile(r"for key '(?:journal\.)?journal_key'")

DRIVER_ERRORS = (mysql_errors.MySQLError, OSError, asyncio.TimeoutError)


def is_server_error(exc: BaseException) -> bool:
    """An error the server reported on a healthy connection (errno < 2000); client errors are CR_* 2000+."""
    if not isinstance(exc, mysql_errors.DatabaseError) or isinstance(exc, mysql_errors.InternalError):
        return False
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return errno is not None and 1000 <= errno < 2000


def translate(exc: BaseException, what: str) -> StorageError:
    if exc.args and exc.args[0] == _ER_CONSTRAINT_FAILED and FENCE_CONSTRAINT in str(exc.args[-1]):
        return Fenced(f"mariadb {what}: fenced, the shard has another owner now")
    if isinstance(exc, mysql_errors.IntegrityError) and exc.args and exc.args[0] == _ER_DUP_ENTRY:
        if _DUPLICATE_OP_KEY.search(str(exc.args[-1])):
            return DuplicateOperation(str(exc.args[-1]))
    return StorageError(f"mariadb {what}: {exc!r}")


def column_list(columns: tuple[str, ...]) -> str:
    return ",".join(f"`{c}`" for c in columns)
