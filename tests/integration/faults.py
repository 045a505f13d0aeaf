"""Fault injection at the storage port: ``FaultyStorage`` wraps a real storage (SQLite file,
MariaDB database) and makes chosen calls of the port fail, or run something first. Nothing of
an adapter is overridden: what the engine sees is what a real failure at that call looks like.

    storage = FaultyStorage(SqliteShardStorage(path))
    storage.fail("commit")                  # the next commit raises; nothing of it is written
    storage.fail("commit", landed=True)     # ... written, then raises (lost during COMMIT)
    storage.down()                          # every call raises until up(): a database away
    storage.before("commit", hook)          # await hook() before the next real commit
    storage.calls["commit"]                 # the arguments of every commit that got through
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncmy

from balance.storage.base import ShardStorage, StorageError
from balance.storage.mariadb import MariaDbShardStorage

Hook = Callable[..., Awaitable[None]]


@dataclass
class _Fault:
    times: int
    error: StorageError
    landed: bool  # the real call ran (and its effect stands) before the error


class FaultyStorage:
    """A ShardStorage that forwards every call to ``inner``, except for the faults armed."""

    def __init__(self, inner: ShardStorage, *, unreachable: str = "injected: the database is unreachable") -> None:
        self.inner = inner
        self.is_down = False
        self._unreachable = unreachable
        self._faults: dict[str, list[_Fault]] = defaultdict(list)
        self._hooks: dict[str, list[Hook]] = defaultdict(list)
        self.calls: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.refused: dict[str, int] = defaultdict(int)  # calls answered with an injected error

    # ---- arming ----------------------------------------------------------------------------

    def fail(
        self, method: str, times: int = 1, *, landed: bool = False, error: str = "injected: storage failed"
    ) -> None:
        """The next ``times`` calls of ``method`` raise StorageError(``error``); with ``landed``
        the real call runs first (its effect stands) and the caller is told it failed."""
        self._check(method)
        self._faults[method].append(_Fault(times, StorageError(error), landed))

    def before(self, method: str, hook: Hook) -> None:
        """``await hook(*args)`` before the next call of ``method`` reaches the real storage."""
        self._check(method)
        self._hooks[method].append(hook)

    def down(self) -> None:
        """Every call (open included) raises StorageError until ``up()``: the database is away."""
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    @property
    def armed(self) -> bool:
        return any(self._faults.values()) or any(self._hooks.values())

    def _check(self, method: str) -> None:
        if not inspect.iscoroutinefunction(getattr(self.inner, method, None)):
            raise AttributeError(f"{type(self.inner).__name__}.{method} is not an async method of the port")

    # ---- forwarding --------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(real):
            return real  # in_flight_max, prepare, attributes: as they are
        if name == "close":
            return real  # closing always works, even while down

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.is_down:
                self.refused[name] += 1
                raise StorageError(self._unreachable)
            hooks = self._hooks.get(name)
            hook = hooks.pop(0) if hooks else None
            fault = self._take(name)  # this call's, before the hook lets the next one in
            if hook is not None:
                await hook(*args, **kwargs)
                if self.is_down:  # the hook took the database away
                    self.refused[name] += 1
                    raise StorageError(self._unreachable)
            if fault is not None and not fault.landed:
                self.refused[name] += 1
                raise fault.error
            result = await real(*args, **kwargs)
            self.calls[name].append(args)
            if fault is not None:
                self.refused[name] += 1
                raise fault.error
            return result

        return call

    def _take(self, name: str) -> _Fault | None:
        faults = self._faults.get(name)
        if not faults:
            return None
        fault = faults[0]
        fault.times -= 1
        if fault.times <= 0:
            faults.pop(0)
        return fault

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r})"


class LosesTheConnectionAtXaCommit(MariaDbShardStorage):
    """The one fault not at the port: the MariaDB adapter's own XA path, tested as such. The
    server drops the writer connection just before ``XA COMMIT`` (when armed): the branch is
    prepared, and whether it commits is for the storage to settle. The moment lies inside one
    call of the port, so no wrapper can reach it."""

    armed = False

    @classmethod
    def like(cls, storage: MariaDbShardStorage) -> LosesTheConnectionAtXaCommit:
        return cls(storage.host, storage.port, storage.user, storage._password, storage.database)

    async def _xa_commit(self, cur: Any, xid: str) -> None:
        if self.armed:
            self.armed = False
            admin = await asyncmy.connect(host=self.host, port=self.port, user=self.user, password=self._password)
            try:
                async with admin.cursor() as admin_cur:
                    await admin_cur.execute(f"KILL CONNECTION {int(cur.connection.server_thread_id[0])}")
            finally:
                await admin.ensure_closed()
        await super()._xa_commit(cur, xid)
