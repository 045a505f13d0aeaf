"""How the service and the API reach shards: one port per shard, and where accounts live.

``ShardPort`` is everything they may ask of a shard: submit commands, read committed
state (accounts, holds, children, history, pending cross-shard movements, API keys), and the
shard's clock and storage backoff (key rows are stamped by the shard's clock; loading keys
waits as the shard's recovery waits). ``InProcessShard``
is the adapter for a shard whose engine runs in this process; another adapter (a shard in
another process) needs only these methods. ``Placement`` says which shard an account id
lives on and where a new top-level account goes, instead of ``shard_of`` and ``len(engines)``
spread through the code.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from balance.domain import commands as c
from balance.domain.authority import Actor
from balance.engine.replies import Collector, Reply
from balance.storage.base import Row

if TYPE_CHECKING:
    from balance.engine.clock import Clock
    from balance.engine.recovery import Backoff
    from balance.engine.shard import ShardEngine


class ShardPort(Protocol):
    """One shard, as the service and the API see it."""

    shard: int
    clock: Clock  # the time the shard stamps its rows with (a key's created_at, revoked_at)
    backoff: Backoff  # how long to wait before asking the shard's storage again

    def execute(self, command: c.Command, /) -> Awaitable[Reply]:
        """Submit: the reply comes once the command's batch is durable (or undone: 503)."""

    def enqueue_into(self, command: c.Command, collector: Collector, index: int, /) -> None:
        """Submit into a batch request's collector (no future per operation); raises ``Unavailable``."""

    def account_state(self, account_id: str, /) -> Row | None:
        """The account as last committed (no dirty read of a batch still being written)."""

    def parent_of(self, account_id: str, /) -> str | None: ...

    def account_status(self, account_id: str, /) -> str | None:
        """The account's status as the shard has it now (None: not there): what its keys may do."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def hold_state(self, account_id: str, hold_id: str) -> Row | None: ...

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]: ...

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]: ...

    async def pending_transfers(self) -> list[Row]: ...

    async def load_keys(self) -> list[Row]:
        """Every API key stored in the shard (``schema.KEY_COLUMNS``)."""

    def account_count(self) -> int: ...

    def status(self) -> dict[str, object] | None:
        """What ``/readyz`` says of the shard (state, attempts, last storage error), or None
        when this process does not serve it (a fleet node's shard owned elsewhere)."""

    def committed_seq(self) -> int:
        """The shard's next seq after what is committed (0: not served here): the event feed's clock."""

    def expect_inbound(self, account_id: str, leg: str, expected: bool) -> None:
        """Money of a cross-shard movement is on its way to ``account_id`` (or no longer), or a
        hold of another shard names it (``ledger.inbound_hold_mark``): closing it waits meanwhile."""

    def inbound_marks(self, prefix: str) -> list[tuple[str, str]]:
        """(account, mark) of the ``expect_inbound`` marks that begin with ``prefix``."""

    def status_now(self, account_id: str) -> str | None:
        """The account's status with the batches not yet committed (a close on its way shows)."""

    def hold_may_be_pending(self, account_id: str, hold_id: str, destination_id: str) -> bool:
        """The hold naming ``destination_id`` is pending, as committed or with the batches not yet committed."""

    def take_remote_holds_loaded(self) -> dict[tuple[str, str], str]:
        """Once, after a load: this shard's pending holds naming another shard's account."""

    def watch(
        self,
        on_commit: Callable[[list[Row], list[tuple[str, str, str, bool]]], None],
        on_reload: Callable[[], None],
    ) -> None:
        """Be told, as each commit lands, of the legs it started and the holds naming another
        shard's account it placed or settled; and when the shard was loaded again."""


class ShardsElsewhere(Protocol):
    """A fleet node (``balance.node.keeper.ShardKeeper``): the accounts it does not serve."""

    def shard_elsewhere(self, account_id: str) -> int | None:
        """The shard of ``account_id`` if this node does not own it."""

    def body_shard_elsewhere(self, route: str, body: bytes, headers: dict[bytes, bytes]) -> int | None:
        """For a route whose account is in the body (``POST /v1/accounts``: where the new
        account goes; ``POST /v1/transfers``: the source account), its shard if owned elsewhere."""

    async def forward(
        self,
        shard: int,
        method: str,
        path: str,
        raw_query: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        *,
        again: bool = False,
    ) -> Reply:
        """The answer of the node that owns ``shard`` (503 if none answers). ``again``: also a
        request another node forwarded here (a partner move switched its account meanwhile)."""

    async def key_written(self, row: Row) -> None:
        """A key was created or revoked here (``schema.KEY_COLUMNS``): tell the other nodes."""

    def fleet_actor(self, headers: dict[bytes, bytes]) -> Actor | None:
        """A request another node sent (it carries the fleet secret): an actor with no powers
        on the API's routes, admitted for the internal ones; None for any other request."""

    async def internal(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply:
        """An internal route (``/internal/...``): another node's step of a movement across nodes."""

    async def mark_hold(self, account_id: str, hold_id: str, destination_id: str) -> c.RemoteAccount | Reply:
        """Before a hold naming an account of another node's shard is placed: marked there,
        and that account's committed state (a Reply: 503, nothing to place)."""

    def drop_hold_mark(self, account_id: str, hold_id: str, destination_id: str) -> None:
        """That hold is settled or was not placed: its mark on the other node goes (in the background)."""

    async def move_in(self, shard: int, command: c.MoveIn) -> Reply:
        """A partner move's arrival on ``shard``: here if this node owns it, else on its owner."""

    async def set_placements(self, changes: list[tuple[str, int | None]]) -> None:
        """A partner move's switch, written to the directory (raises if it is not written)."""

    def owns(self, shard: int) -> bool:
        """This node serves ``shard`` now."""

    async def history_elsewhere(
        self, shard: int, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[tuple[int, int, Any]] | Reply:
        """A moved account's rows on ``shard``, which another node owns: (created_at, seq, the
        Txn as raw JSON), newest first; a 503 Reply if that node cannot be asked."""

    async def hold_elsewhere(self, shard: int, account_id: str, hold_id: str) -> tuple[str, Any] | Reply:
        """A moved account's hold as ``shard`` (another node's) has it: (status, the Hold as raw
        JSON), ("", None) if it has none; a 503 Reply if that node cannot be asked."""

    async def placement_behind(self, headers: dict[bytes, bytes]) -> bool:
        """A request another node forwarded here for an account this node places elsewhere: that
        node may know of a partner move's switch this one has not read yet. Reads the
        directory's placement changes now (at most every few ms); True if it did."""

    def holds_indexed(self, shard: int) -> None:
        """The service knows the holds of ``shard`` naming other shards (since its recovery)."""

    def batch_shard_elsewhere(self, account_id: str, headers: dict[bytes, bytes]) -> int | None:
        """A batch's operation on an account of a shard another node owns (None: run it here,
        also for a batch another node forwarded: it is not forwarded again)."""

    async def forward_batch(self, parts: list[tuple[int, bytes]], headers: dict[bytes, bytes]) -> list[Reply]:
        """A batch's operations (shard, raw operation) on other nodes' shards: one forward per
        owning node, the answers in the order given; 503 each for a node that does not answer."""


class InProcessShard:
    """The port of a shard whose engine runs in this process. The hot calls are the engine's
    own bound methods (no call through the adapter per operation)."""

    def __init__(self, engine: ShardEngine) -> None:
        self.engine = engine
        self.shard = engine.shard
        self.execute = engine.execute
        self.enqueue_into = engine.enqueue_into
        self.account_state = engine.account_state
        self.parent_of = engine.parent_of
        self.account_status = engine.account_status
        self.clock = engine.clock
        self.backoff = engine.backoff

    @property
    def ready(self) -> bool:
        return self.engine.ready

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def hold_state(self, account_id: str, hold_id: str) -> Row | None:
        return await self.engine.hold_state(account_id, hold_id)

    async def children(self, parent_id: str, limit: int, after_id: str | None) -> list[str]:
        return await self.engine.storage.children(parent_id, limit, after_id)

    async def history(
        self, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[Row]:
        return await self.engine.storage.history(account_id, limit, before_seq, since, until)

    async def pending_transfers(self) -> list[Row]:
        return await self.engine.storage.pending_transfers()

    async def load_keys(self) -> list[Row]:
        return await self.engine.storage.load_keys()

    def status(self) -> dict[str, object] | None:
        return self.engine.status()

    def committed_seq(self) -> int:
        return self.engine.ledger.committed_seq

    def account_count(self) -> int:
        return len(self.engine.ledger.accounts)

    def expect_inbound(self, account_id: str, leg: str, expected: bool) -> None:
        ledger = self.engine.ledger
        ledger.mark(ledger.inbound, account_id, leg, expected)

    def inbound_marks(self, prefix: str) -> list[tuple[str, str]]:
        return self.engine.ledger.inbound_marks(prefix)

    def status_now(self, account_id: str) -> str | None:
        account = self.engine.ledger.accounts.get(account_id)
        return None if account is None else account.status

    def hold_may_be_pending(self, account_id: str, hold_id: str, destination_id: str) -> bool:
        return self.engine.ledger.hold_may_be_pending(account_id, hold_id, destination_id)

    def take_remote_holds_loaded(self) -> dict[tuple[str, str], str]:
        return self.engine.ledger.take_remote_holds_loaded()

    def watch(
        self,
        on_commit: Callable[[list[Row], list[tuple[str, str, str, bool]]], None],
        on_reload: Callable[[], None],
    ) -> None:
        self.engine.on_commit = on_commit
        self.engine.on_reload = lambda _engine: on_reload()


@functools.lru_cache(maxsize=65536)
def shard_in_id(account_id: str) -> int | None:
    """The home shard encoded in an account id (``US-3-9f2c...``), or None if it is not one of ours."""
    parts = account_id.split("-", 2)
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 9:
        return None  # not ASCII digits ("²" passes isdigit) or too long for int(): not one of ours
    return int(parts[1])


class Placement:
    """Where accounts live: the shard an id names (ids encode it, so a request is routed
    without a look-up) unless the fleet's directory overrides it (a partner moved with its
    subtree), and the shard a new top-level account goes to (a child lives on its parent's
    shard, so a partner's subtree stays on one shard).

    ``overrides`` (account id -> shard) holds one entry per account that lives elsewhere than
    its id says: a moved partner's whole subtree is one entry per account, written together by
    the move (``ShardDirectory.set_placements``), so a look-up is one dict get, whatever the
    depth, with nothing to ask a shard. A node reads them from the directory (``ShardKeeper``);
    a single process has none. A child created after its parent moved gets an id naming the
    parent's new shard, so it needs no entry."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.overrides: dict[str, int] = {}
        # Every account a change ever named (its override set or removed): those that moved at
        # least once, whose history may be on shards other nodes own (``BalanceService.history_shards``).
        self.moved: set[str] = set()

    def shard_of(self, account_id: str) -> int | None:
        """The shard ``account_id`` lives on, or None if no shard of this deployment has it."""
        shard = self.overrides.get(account_id)
        if shard is None:
            shard = shard_in_id(account_id)
            if shard is None:
                return None
        return shard if shard < self.shards else None

    def override(self, changes: list[tuple[str, int | None]]) -> None:
        """Changes read from the directory, in order (shard None: the override was removed);
        applied together, with nothing else running in between."""
        overrides = self.overrides
        self.moved.update(account_id for account_id, _ in changes)
        for account_id, shard in changes:
            if shard is None:
                overrides.pop(account_id, None)
            else:
                overrides[account_id] = shard

    def created_before(self, region: str, parent_id: str | None, suffix: str) -> str | None:
        """The id a creation under a client id got at its first try, if that account has moved
        since (its retry must find it where it lives, not create another): a top-level one's id
        names the shard its client id hashes to; a child's, its parent's shard at the time,
        which is the one its parent's id names unless the parent had moved before (then the
        retry creates anew: not covered)."""
        if not self.overrides:
            return None
        if parent_id is None:
            candidate = f"{region}-{int(suffix, 16) % self.shards}-{suffix}"
        else:
            home = shard_in_id(parent_id)
            candidate = f"{region}-{home}-{suffix}"
        return candidate if candidate in self.overrides else None

    def new_top_level(self, account_counts: list[int]) -> int:
        """The shard for a new top-level account: the least filled."""
        return min(range(self.shards), key=account_counts.__getitem__)
