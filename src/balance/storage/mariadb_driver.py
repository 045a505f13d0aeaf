"""What the MariaDB modules share of the driver: the errors it raises, told apart and
translated to ``StorageError`` at this edge, and how a column list is quoted."""

from __future__ import annotations

import asyncio
import re

from asyncmy import errors as mysql_errors

from balance.storage.base import FENCE_META_KEY, DuplicateOperation, Fenced, StorageError

_ER_DUP_ENTRY = 1062
_ER_SIGNAL_EXCEPTION = 1644  # SIGNAL SQLSTATE '45000': raised by the fence guard
FENCED_MESSAGE = "fenced: the shard has another owner"


def fence_guard(epoch: int) -> str:
    """The statement that opens every commit of an owner: it takes a shared lock on the fence
    row (a takeover's UPDATE waits for the commits in progress, and they for it) and fails
    the transaction, inside the server, when the row holds another epoch. Sent in the same
    packet as the batch's rows: no round trip of its own."""
    return (
        f"IF (SELECT value FROM meta WHERE name = '{FENCE_META_KEY}' LOCK IN SHARE MODE) <=> {int(epoch)}"
        f" THEN DO 0; ELSE SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{FENCED_MESSAGE}'; END IF"
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
    if exc.args and exc.args[0] == _ER_SIGNAL_EXCEPTION and FENCED_MESSAGE in str(exc.args[-1]):
        return Fenced(f"mariadb {what}: {FENCED_MESSAGE}")
    if isinstance(exc, mysql_errors.IntegrityError) and exc.args and exc.args[0] == _ER_DUP_ENTRY:
        if _DUPLICATE_OP_KEY.search(str(exc.args[-1])):
            return DuplicateOperation(str(exc.args[-1]))
    return StorageError(f"mariadb {what}: {exc!r}")


def column_list(columns: tuple[str, ...]) -> str:
    return ",".join(f"`{c}`" for c in columns)
