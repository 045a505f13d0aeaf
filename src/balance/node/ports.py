"""The port of one shard in a node: its in-process engine while this node owns the shard;
otherwise every command is answered 503 ``unavailable`` (with Retry-After: the edge or the
client retries, and reaches the owner) and the shard holds nothing here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from balance.domain import commands as c
from balance.engine.clock import Clock
from balance.engine.recovery import Backoff
from balance.engine.replies import Collector, Reply, Unavailable, unavailable_reply
from balance.engine.shard import ShardEngine
from balance.storage.base import Row

AWAY_COUNT = 1 << 62  # the account count of a shard owned elsewhere: never chosen for a new account


class NodeShard:
    """A ShardPort whose engine comes and goes with the lease (``own`` / ``disown``). While
    owned, the hot calls are the engine's own bound methods, as in ``InProcessShard``."""

    def __init__(
        self,
        shard: int,
        clock: Clock,
        backoff: Backoff,
        remote: Callable[[int, c.Command], Awaitable[Reply]] | None = None,
    ) -> None:
        self.shard = shard
        self.remote = remote  # a command for this shard while another node owns it (a transfer's target leg)
        self.clock = clock
        self.backoff = backoff
        self.engine: ShardEngine | None = None
        self.taken_over = False  # owned by a takeover while the node served: its recovery blocks no one else
        self.execute: Callable[[c.Command], Awaitable[Reply]] = self._away_execute
        self.enqueue_into: Callable[[c.Command, Collector, int], None] = self._away_enqueue
        self.account_state: Callable[[str], Row | None] = self._nothing
        self.parent_of: Callable[[str], str | None] = self._nothing
        self.account_status: Callable[[str], str | None] = self._nothing
        self._watchers: (
            tuple[Callable[[list[Row], list[tuple[str, str, str, bool]]], None], Callable[[], None]] | None
        ) = None

    def own(self, engine: ShardEngine, *, taken_over: bool = False) -> None:
        self.engine, self.taken_over = engine, taken_over
        self.execute = engine.execute
        self.enqueue_into = engine.enqueue_into
        self.account_state = engine.account_state
        self.parent_of = engine.parent_of
        self.account_status = engine.account_status
        if self._watchers is not None:
            self._watch_engine(engine)

    def disown(self) -> ShardEngine | None:
        engine, self.engine = self.engine, None
        self.execute, self.enqueue_into = self._away_execute, self._away_enqueue
        self.account_state = self.parent_of = self.account_status = self._nothing
        return engine

    def _detail(self) -> str:
        return f"shard {self.shard} is not served by this node (it is taken over or served by another node)"

    async def _away_execute(self, command: c.Command) -> Reply:
        if self.remote is not None:
            return await self.remote(self.shard, command)
        return unavailable_reply(self._detail())

    def _away_enqueue(self, command: c.Command, collector: Collector, index: int) -> None:
        raise Unavailable(self._detail())

    @staticmethod
    def _nothing(account_id: str) -> None:
        return None

    @property
    def ready(self) -> bool:
        """Owned at start: when its engine serves (the node is ready when they all are).
        Taken over later, or not owned: nothing for the node to wait for (while a taken-over
        shard recovers, its own requests get 503 from its engine; the node's others are served)."""
        return self.engine is None or self.taken_over or self.engine.ready

    async def start(self) -> None:
        if self.engine is not None:
            await self.engine.start()

    async def stop(self) -> None:
        engine = self.disown()
        if engine is not None:
            await engine.stop()

    async def hold_state(self, account_id: str, hold_id: str) -> Row | None:
        return None if self.engine is None else await self.engine.hold_state(account_id, hold_id)

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]:
        return [] if self.engine is None else await self.engine.storage.children(parent_id, limit, after_id)

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]:
        if self.engine is None:
            return []
        return await self.engine.storage.history(account_id, limit, before_seq, since, until)

    async def pending_transfers(self) -> list[Row]:
        return [] if self.engine is None else await self.engine.storage.pending_transfers()

    async def load_keys(self) -> list[Row]:
        return [] if self.engine is None else await self.engine.storage.load_keys()

    def account_count(self) -> int:
        return AWAY_COUNT if self.engine is None else len(self.engine.ledger.accounts)

    def status(self) -> dict[str, object] | None:
        return None if self.engine is None else self.engine.status()

    def committed_seq(self) -> int:
        return 0 if self.engine is None else self.engine.ledger.committed_seq

    def expect_inbound(self, account_id: str, leg: str, expected: bool) -> None:
        if self.engine is not None:
            ledger = self.engine.ledger
            ledger.mark(ledger.inbound, account_id, leg, expected)

    def inbound_marks(self, prefix: str) -> list[tuple[str, str]]:
        return [] if self.engine is None else self.engine.ledger.inbound_marks(prefix)

    def status_now(self, account_id: str) -> str | None:
        account = None if self.engine is None else self.engine.ledger.accounts.get(account_id)
        return None if account is None else account.status

    def hold_may_be_pending(self, account_id: str, hold_id: str, destination_id: str) -> bool:
        # Not owned here: the owner answers for it; "may be" errs on the safe side (a close waits).
        return self.engine is None or self.engine.ledger.hold_may_be_pending(account_id, hold_id, destination_id)

    def take_remote_holds_loaded(self) -> dict[tuple[str, str], str]:
        return {} if self.engine is None else self.engine.ledger.take_remote_holds_loaded()

    def watch(
        self,
        on_commit: Callable[[list[Row], list[tuple[str, str, str, bool]]], None],
        on_reload: Callable[[], None],
    ) -> None:
        """Kept for every engine this node owns the shard with (set again at each ``own``)."""
        self._watchers = (on_commit, on_reload)
        if self.engine is not None:
            self._watch_engine(self.engine)

    def _watch_engine(self, engine: ShardEngine) -> None:
        assert self._watchers is not None
        on_commit, on_reload = self._watchers
        engine.on_commit = on_commit
        engine.on_reload = lambda _engine: on_reload()
