"""What the MariaDB modules share of the driver: the errors it raises, told apart and
translated to ``StorageError`` at this edge, and how a column list is quoted."""

from __future__ import annotations

import asyncio
import re

from asyncmy import errors as mysql_errors

from balance.storage.base import DuplicateOperation, StorageError

_ER_DUP_ENTRY = 1062
_DUPLICATE_OP_KEY = re.compile(r"for key '(?:journal\.)?journal_key'")

DRIVER_ERRORS = (mysql_errors.MySQLError, OSError, asyncio.TimeoutError)


def is_server_error(exc: BaseException) -> bool:
    """An error the server reported on a healthy connection (errno < 2000); client errors are CR_* 2000+."""
    if not isinstance(exc, mysql_errors.DatabaseError) or isinstance(exc, mysql_errors.InternalError):
        return False
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return errno is not None and 1000 <= errno < 2000


def translate(exc: BaseException, what: str) -> StorageError:
    if isinstance(exc, mysql_errors.IntegrityError) and exc.args and exc.args[0] == _ER_DUP_ENTRY:
        if _DUPLICATE_OP_KEY.search(str(exc.args[-1])):
            return DuplicateOperation(str(exc.args[-1]))
    return StorageError(f"mariadb {what}: {exc!r}")


def column_list(columns: tuple[str, ...]) -> str:
    return ",".join(f"`{c}`" for c in columns)
