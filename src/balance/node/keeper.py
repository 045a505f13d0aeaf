"""The leases of one node: taken, renewed and given up in the directory, and the takeover of
a shard (fence its database with the new epoch, recover, serve).

Every ``lease_s / 3`` the keeper renews the leases it holds (compare-and-set on the epoch) and
tries to take the shards the directory assigns to it, or for which it is the standby, whose
lease is free or expired. A renewal that finds another epoch means the shard was taken over:
the engine is stopped (its commits were fenced already). While the directory is away the
node keeps serving (fencing keeps that safe) and logs each failed attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import msgspec

from balance import views
from balance.directory.records import DirectoryError, NodeRecord, Ownership, ShardDirectory, ShardRecord
from balance.domain import commands as c
from balance.domain import limits
from balance.domain.authority import Actor
from balance.domain.ids import client_account_suffix
from balance.domain.ledger import inbound_hold_mark
from balance.domain.model import (
    ACCOUNT_FIELDS,
    ACCOUNT_STATUS,
    HOLD_STATUS,
    JOURNAL_CREATED_AT,
    JOURNAL_SEQ,
    STATUS_CLOSED,
    Account,
)
from balance.engine.partner_move import move_in_from_wire, move_in_wire
from balance.engine.replies import Reply, unavailable_reply
from balance.engine.shard import FENCED, ShardEngine
from balance.node import crash_points
from balance.node.forwarding import (
    INTERNAL_PREFIX,
    DestinationWire,
    Forwarder,
    HistoryAsk,
    HistoryWire,
    HoldAsk,
    HoldMarkWire,
    HoldsNamingAsk,
    HoldsNamingWire,
    HoldWire,
    LegWire,
)
from balance.node.ports import NodeShard
from balance.node.remote_marks import RemoteMarks
from balance.shards import Placement
from balance.storage.base import Row
from balance.views import problem

log = logging.getLogger("balance.node")

FLEET_ACTOR = Actor("fleet", 0, "")  # another node: no powers on the API's routes (internal ones only)
FINISH_EVERY_S = 2.0  # how often transfers in flight (their target on another node) are finished
# How often the marks of other nodes' holds are checked again once known (a drop that was lost,
# a mark its holder set before crashing): each tick until they are known after a recovery.
MARKS_RESYNC_S = 30.0
OWNERS_REREAD_S = 0.2  # an unknown owner is looked up in the directory at most this often
KEY_POLL_S = 1.0  # at most this between two reads of the keys (a revocation reaches every node within ~1 s)
KEY_CLOCK_MARGIN_MS = 5000  # key rows are stamped by their writer's clock: re-read this far back
# After a partner arrived on a shard here: how long after this node routes it here before the
# marks of other nodes' holds naming its accounts are asked for (every node reads placements
# within a tick, at most 1 s; until they have, they would not say which of their holds name it).
ARRIVAL_SETTLE_S = 2.5


_SHARD_ROUTES = ("transfer-in", "hold-mark", "move-in", "payment-result", "history", "hold")


def _no_route(method: str, path: str) -> Reply:
    return Reply(404, problem("not_found", 404, f"{method} {path} is not a route"))


def now_ms() -> int:
    return int(time.time() * 1000)


class ShardKeeper:
    def __init__(
        self,
        node: NodeRecord,
        directory: ShardDirectory,
        ports: list[NodeShard],
        make_engine: Callable[[ShardRecord, int], ShardEngine],
        *,
        lease_s: float,
        on_taken_over: Callable[[NodeShard], object] | None = None,
        forwarder: Forwarder | None = None,
        on_key: Callable[[Row], None] | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.node = node
        # Where accounts live (the service's own: the overrides read here route its requests too).
        self.placement = Placement(len(ports)) if placement is None else placement
        self.shard_of = self.placement.shard_of
        self._placements_read_to = -1  # the placements version read up to (-1: none, not even version 0)
        self._placements_synced_at = 0.0  # when the last read on demand began (``placement_behind``)
        self._placements_lock = asyncio.Lock()
        self.directory = directory
        self.ports = ports
        self.make_engine = make_engine  # (the shard, its epoch) -> an engine over its fenced storage
        self.lease_ms = int(lease_s * 1000)
        self.on_taken_over = on_taken_over  # after a takeover has recovered: load keys, finish transfers
        self.forwarder = forwarder
        self.on_key = on_key  # a key row of another node's shard, read from the directory
        self._keys_read_to = 0  # written_at of the newest key row read (re-read with a margin: clocks differ)
        self._keys_pushed: set[int] = set()  # owned shards whose keys are in the directory
        # Transfers in flight to other nodes' shards: finished in the background (and at start).
        self.finish_pending: Callable[[], Awaitable[int]] | None = None
        self._finished_at = 0.0
        self._owners_read_at = 0.0
        self.owner_urls: dict[int, str] = {}  # shard -> the URL of the node holding its live lease (last read)
        self.owned: dict[int, Ownership] = {}
        self.taken_over_at: dict[int, float] = {}  # shard -> seconds its last takeover took (lease + recovery)
        self._starting: dict[int, asyncio.Task[None]] = {}
        # Holds of other shards naming accounts of the shards owned here (``node.remote_marks``).
        self.remote_marks = RemoteMarks(self.shard_of)
        # (the shards asked about) -> this node's holds of other shards naming their accounts,
        # pending or being captured (``BalanceService.holds_naming``); set by the composition root.
        self.holds_naming: Callable[[set[int], set[int]], list[tuple[str, str, str]]] | None = None
        self.indexed: set[int] = set()  # owned shards whose holds ``holds_naming`` knows (since recovered)
        self._drops: set[asyncio.Task[object]] = set()  # hold marks being dropped on other nodes
        self._marks_synced_at = 0.0
        # A payment result another node's consumer received for a shard owned here: applied by this
        # node's results applier (``results.applier``; None: this node consumes no results).
        self.on_payment_result: Callable[[bytes], Awaitable[Reply]] | None = None
        # Partners that arrived on shards here (shard -> [(root, when this node routed it here)]):
        # closes there wait (``remote_marks_unknown``) until marks were asked for after the settle.
        self._arrivals: dict[int, list[tuple[str, float | None]]] = {}

    def shard_elsewhere(self, account_id: str) -> int | None:
        """Also a shard this node is still recovering after a takeover: not served here yet
        (503: its owner is this node, and it is not ready)."""
        shard = self.shard_of(account_id)
        if shard is None:
            return None
        engine = self.ports[shard].engine
        return None if engine is not None and engine.ready else shard

    def body_shard_elsewhere(self, route: str, body: bytes, headers: dict[bytes, bytes]) -> int | None:
        """A transfer goes to its source account's shard. A new account: a child to its
        parent's shard; a top-level account with a ``client_id`` to the shard its retries find
        (``BalanceService.create_account``); any other top-level one to a shard drawn at random
        over the fleet, so that accounts created through any node spread over every shard.
        A request forwarded here already is served here."""
        if self.forwarder is not None and self.forwarder.forwarded(headers):
            return None
        try:
            fields = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return None  # the route answers the bad body
        if not isinstance(fields, dict):
            return None
        if route == "/v1/transfers":
            source = fields.get("from_account_id")
            return self.shard_elsewhere(source) if isinstance(source, str) else None
        parent_id, client_id = fields.get("parent_id"), fields.get("client_id")
        if isinstance(parent_id, str):
            return self.shard_elsewhere(parent_id)
        if isinstance(client_id, str):
            suffix = client_account_suffix(None, client_id)
            shard = int(suffix, 16) % len(self.ports)
            region = fields.get("region")
            moved = self.placement.created_before(region, None, suffix) if isinstance(region, str) else None
            if moved is not None:  # made by an earlier try, moved since: where it lives now
                return self.shard_elsewhere(moved)
        else:
            shard = random.randrange(len(self.ports))
        return None if self.ports[shard].engine is not None else shard

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
        """To the shard's owner as last read from the directory (cached: the directory may be
        away), once; 503 when there is none, no fleet secret, or this request was forwarded already."""
        engine = self.ports[shard].engine
        if engine is not None and shard in self.owned:  # ours, not ready (recovering, resynchronising)
            return unavailable_reply(f"shard {shard} is {engine.state} on this node; retry shortly")
        owner = await self._owner_of(shard)
        forwarder = self.forwarder
        if forwarder is None or owner is None or (forwarder.forwarded(headers) and not again):
            why = "no fleet secret (BALANCE_FLEET_SECRET) to forward with" if forwarder is None else "no owner known"
            if forwarder is not None and forwarder.forwarded(headers):
                why = "this node does not own it either (forwarded once already)"
            return unavailable_reply(f"shard {shard} is not served by this node: {why}")
        return await forwarder.forward(owner, method, path, raw_query, headers, body)

    def batch_shard_elsewhere(self, account_id: str, headers: dict[bytes, bytes]) -> int | None:
        if self.forwarder is not None and self.forwarder.forwarded(headers):
            return None  # forwarded here: run here (what is not ours answers 503)
        return self.shard_elsewhere(account_id)

    async def forward_batch(self, parts: list[tuple[int, bytes]], headers: dict[bytes, bytes]) -> list[Reply]:
        """Each node's share of a batch forwarded once, all at the same time (the pooled,
        kept-alive connections of the ``Forwarder``); the answers in the order of ``parts``."""
        replies: list[Reply | None] = [None] * len(parts)
        by_owner: dict[str, list[int]] = {}
        for position, (shard, _) in enumerate(parts):
            engine = self.ports[shard].engine
            owner = None if engine is not None else await self._owner_of(shard)
            if self.forwarder is None or owner is None:
                replies[position] = unavailable_reply(
                    f"shard {shard} is not served by this node, nor by a node it knows"
                )
            else:
                by_owner.setdefault(owner, []).append(position)
        forwarder = self.forwarder
        if by_owner and forwarder is not None:
            owners = list(by_owner)
            answers = await asyncio.gather(
                *(forwarder.batch(owner, headers, [parts[p][1] for p in by_owner[owner]]) for owner in owners)
            )
            for owner, answered in zip(owners, answers, strict=True):
                for position, reply in zip(by_owner[owner], answered, strict=True):
                    replies[position] = reply
        return [reply for reply in replies if reply is not None]

    async def _candidates(self) -> list[ShardRecord]:
        me = self.node.id
        return [s for s in await self.directory.shards() if me in (s.node_id, s.standby_node_id)]

    async def first_pass(self) -> None:
        """At start: heartbeat and the leases to be had now; the engines start with the service."""
        await self.directory.heartbeat(NodeRecord(self.node.id, self.node.url, self.node.region, now_ms()))
        for shard in await self._candidates():
            ownership = await self.directory.acquire(shard.id, self.node.id, now_ms(), self.lease_ms)
            if ownership is not None:
                self._own(shard, ownership)
        await self._read_owners()
        await self._sync_placements()  # every override, before the node serves
        await self._sync_keys()  # every key of the other nodes' shards, before the node serves

    def fleet_actor(self, headers: dict[bytes, bytes]) -> Actor | None:
        return FLEET_ACTOR if self.forwarder is not None and self.forwarder.forwarded(headers) else None

    async def remote_execute(self, shard: int, command: c.Command) -> Reply:
        """A command for a shard another node owns: a transfer's target leg goes to that node."""
        owner = await self._owner_of(shard)
        if not isinstance(command, c.TransferIn) or self.forwarder is None or owner is None:
            return unavailable_reply(f"shard {shard} is owned by another node, which cannot be reached now")
        return await self.forwarder.transfer_in(owner, shard, command.transfer)

    async def internal(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply:
        """``POST /internal/v1/...``, from another node only (the fleet secret; anyone else is
        told there is no such route): a step of a movement whose other end is on that node.

        - ``shards/{n}/transfer-in``: the target leg of a transfer (or of a hold's capture)
          whose source is on that node's shard;
        - ``shards/{n}/hold-mark``: a hold of that node names an account of shard ``n``: mark
          it (before the hold is placed; answered the account's committed state) or drop it;
        - ``shards/{n}/payment-result``: a payment result that node's consumer received for an
          account of shard ``n``: applied here, the verdict back (``results.applier``);
        - ``holds-naming``: that node's question, which holds of this node's shards name
          accounts of its shards (``node.remote_marks``);
        - ``shards/{n}/history``, ``shards/{n}/hold``: a moved account's rows, or one of its
          holds, on shard ``n``, for the node it lives on now (``GET …/transactions``, ``GET
          …/holds/{id}`` there: the rows stay where they were written, docs/moves.md)."""
        parts = path.removeprefix(INTERNAL_PREFIX).split("/")
        if self.forwarder is None or not self.forwarder.forwarded(headers) or method != "POST":
            return _no_route(method, path)
        if parts == ["holds-naming"]:
            return self._holds_naming(body)
        if len(parts) != 3 or parts[0] != "shards" or not parts[1].isdigit() or parts[2] not in _SHARD_ROUTES:
            return _no_route(method, path)
        shard = int(parts[1])
        engine = self.ports[shard].engine if shard < len(self.ports) else None
        if engine is None or not engine.ready:
            return unavailable_reply(f"shard {shard} is not served by this node now")
        if parts[2] == "hold-mark":
            marked = self._hold_mark(shard, body)
            if marked.status == 422 and await self._placements_read_since(time.monotonic()):
                marked = self._hold_mark(shard, body)  # the account may have just moved here
            return marked
        if parts[2] == "payment-result":
            if self.on_payment_result is None:
                return unavailable_reply(f"node {self.node.id} does not consume payment results")
            return await self.on_payment_result(body)
        if parts[2] == "history":
            return await self._history(engine, body)
        if parts[2] == "hold":
            return await self._hold(engine, body)
        if parts[2] == "move-in":  # a partner move's arrival (``engine.partner_move``)
            try:
                arriving = move_in_from_wire(body)
            except ValueError as exc:
                return Reply(422, problem("validation_error", 422, str(exc)))
            arrived = await engine.execute(arriving)
            if arrived.status == 200:
                self.moved_in(shard, arriving.root_id)
                crash_points.reached("after_move_in")
            return arrived
        try:
            transfer = msgspec.json.decode(body, type=LegWire).transfer()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Reply(422, problem("validation_error", 422, f"not a transfer leg: {exc}"))
        # Marked in flight to the account meanwhile (closing it waits), as within one process.
        ledger, leg = engine.ledger, f"{transfer.from_account_id}:{transfer.op_id}"
        ledger.mark(ledger.inbound, transfer.to_account_id, leg, True)
        reply = await engine.execute(c.TransferIn(transfer))
        if reply.status != 503:
            ledger.mark(ledger.inbound, transfer.to_account_id, leg, False)
            crash_points.reached("after_target_leg")
        elif b'"account_moved"' in reply.body:  # not here any more: its retry goes where it lives
            ledger.mark(ledger.inbound, transfer.to_account_id, leg, False)
        return reply

    async def payment_result_to_owner(self, shard: int, body: bytes) -> Reply | None:
        """A payment result for an account of ``shard``: None if this node owns it (applied here,
        or put back while it recovers); else the owner's verdict (``payment-result``), 503 while
        no owner answers (the message is put back)."""
        if shard in self.owned:
            return None
        owner = await self._owner_of(shard)
        if self.forwarder is None or owner is None:
            return unavailable_reply(f"shard {shard} is owned by another node, which cannot be reached now")
        return await self.forwarder.internal(owner, f"shards/{shard}/payment-result", body)

    async def _history(self, engine: ShardEngine, body: bytes) -> Reply:
        """A page of an account's rows on this node's shard (the asking node merges them)."""
        try:
            ask = msgspec.json.decode(body, type=HistoryAsk)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Reply(422, problem("validation_error", 422, f"not a question of history: {exc}"))
        if not 1 <= ask.limit <= limits.HISTORY_LIMIT_MAX:
            return Reply(422, problem("validation_error", 422, "limit out of range"))
        rows = await engine.storage.history(ask.account_id, ask.limit, ask.before_seq, ask.since, ask.until)
        shard = engine.shard
        answer = [(row[JOURNAL_CREATED_AT], row[JOURNAL_SEQ], views.txn_view(row, shard)) for row in rows]
        return Reply(200, msgspec.json.encode({"rows": answer}))

    async def _hold(self, engine: ShardEngine, body: bytes) -> Reply:
        """One hold of an account as this node's shard has it (``moved``, or how it ended here)."""
        try:
            ask = msgspec.json.decode(body, type=HoldAsk)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Reply(422, problem("validation_error", 422, f"not a question of a hold: {exc}"))
        state = await engine.hold_state(ask.account_id, ask.hold_id)
        if state is None:
            return Reply(200, msgspec.json.encode(HoldWire("", msgspec.Raw(b"null"))))
        view = msgspec.Raw(msgspec.json.encode(views.hold_view(state)))
        return Reply(200, msgspec.json.encode(HoldWire(str(state[HOLD_STATUS]), view)))

    async def history_elsewhere(
        self, shard: int, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[tuple[int, int, msgspec.Raw]] | Reply:
        """``account_id``'s rows on ``shard``, owned by another node: (created_at, seq, Txn),
        newest first, as that node renders them; 503 if it cannot be asked."""
        ask = msgspec.json.encode(HistoryAsk(account_id, limit, before_seq, since, until))
        reply = await self._ask_owner(shard, "history", ask)
        if reply.status != 200:
            return reply
        return msgspec.json.decode(reply.body, type=HistoryWire).rows

    async def hold_elsewhere(self, shard: int, account_id: str, hold_id: str) -> tuple[str, msgspec.Raw | None] | Reply:
        """A hold of ``account_id`` as ``shard`` (owned by another node) has it: (status, Hold),
        ("", None) if it has none; 503 if it cannot be asked."""
        reply = await self._ask_owner(shard, "hold", msgspec.json.encode(HoldAsk(account_id, hold_id)))
        if reply.status != 200:
            return reply
        told = msgspec.json.decode(reply.body, type=HoldWire)
        return told.status, (told.hold if told.status else None)

    async def _ask_owner(self, shard: int, route: str, body: bytes) -> Reply:
        owner = await self._owner_of(shard)
        if self.forwarder is None or owner is None:
            return unavailable_reply(f"shard {shard} is owned by another node, which cannot be reached now")
        reply = await self.forwarder.internal(owner, f"shards/{shard}/{route}", body)
        if reply.status not in (200, 503):
            log.warning("node %s: shards/%d/%s answered %d: %r", self.node.id, shard, route, reply.status,
                        reply.body[:200])  # fmt: skip
            return unavailable_reply(f"the node that owns shard {shard} did not answer the read ({reply.status})")
        return reply

    def owns(self, shard: int) -> bool:
        """This node serves ``shard`` now (its engine is here)."""
        return 0 <= shard < len(self.ports) and self.ports[shard].engine is not None

    async def move_in(self, shard: int, command: c.MoveIn) -> Reply:
        """A partner move's arrival on ``shard``: executed here if this node owns it, else sent
        to its owner (503 while none answers: the move waits, forward only)."""
        engine = self.ports[shard].engine
        if engine is not None:
            arrived = await engine.execute(command)
            if arrived.status == 200:
                self.moved_in(shard, command.root_id)
            return arrived
        owner = await self._owner_of(shard)
        if self.forwarder is None or owner is None:
            return unavailable_reply(f"shard {shard} is owned by another node, which cannot be reached now")
        return await self.forwarder.internal(owner, f"shards/{shard}/move-in", move_in_wire(command))

    def moved_in(self, shard: int, root_id: str) -> None:
        """A partner arrived on ``shard``: the holds of other nodes naming its accounts are
        marked here by asking once every node routes it here; closes wait until then."""
        engine = self.ports[shard].engine
        if engine is not None:
            engine.ledger.remote_marks_unknown = True
            self._arrivals.setdefault(shard, []).append((root_id, None))

    def _arrivals_settled(self, shard: int, asked: float) -> bool:
        """Every partner that arrived on ``shard`` was routed here by every node (as far as a
        tick tells) before the ask that began at ``asked`` (an arrival during it: not settled)."""
        waiting = []
        now = time.monotonic()
        for root_id, routed_at in self._arrivals.get(shard, ()):
            if routed_at is None and self.shard_of(root_id) == shard:
                routed_at = now
            if routed_at is None or asked - routed_at < ARRIVAL_SETTLE_S:
                waiting.append((root_id, routed_at))
        if waiting:
            self._arrivals[shard] = waiting
        else:
            self._arrivals.pop(shard, None)
        return not waiting

    async def placement_behind(self, headers: dict[bytes, bytes]) -> bool:
        """See ``shards.ShardsElsewhere.placement_behind``: one read at a time, and none for a
        request that came before a read began (that read is fresh enough for it)."""
        if self.forwarder is None or not self.forwarder.forwarded(headers):
            return False
        return await self._placements_read_since(time.monotonic())

    async def _placements_read_since(self, asked: float) -> bool:
        """The directory's placement changes read after ``asked`` (one read at a time)."""
        async with self._placements_lock:
            if self._placements_synced_at < asked:
                self._placements_synced_at = time.monotonic()
                try:
                    await self._sync_placements()
                except DirectoryError as exc:
                    log.warning("node %s: the directory did not answer (%s)", self.node.id, exc)
                    return False
        return True

    async def set_placements(self, changes: list[tuple[str, int | None]]) -> None:
        """A partner move's switch into the directory (every node reads it within about a
        second); this node's own placement at once."""
        placed = {account_id: shard for account_id, shard in changes if shard is not None}
        removed = [account_id for account_id, shard in changes if shard is None]
        if placed:
            await self.directory.set_placements(placed, now_ms())
        if removed:
            await self.directory.remove_placements(removed, now_ms())
        self.placement.override(changes)

    def _hold_mark(self, shard: int, body: bytes) -> Reply:
        """Mark (or unmark) a hold of another node naming an account of ``shard``. Marking
        answers what the shard has committed of the account (the hold's rule decides on it); an
        account being created or closed right now answers 503, as within one process."""
        try:
            wire = msgspec.json.decode(body, type=HoldMarkWire)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Reply(422, problem("validation_error", 422, f"not a hold mark: {exc}"))
        destination_id = wire.destination_id
        if self.shard_of(destination_id) != shard or self.shard_of(wire.account_id) in (None, shard):
            return Reply(422, problem("validation_error", 422, f"not a hold of another shard naming shard {shard}"))
        mark = (destination_id, inbound_hold_mark(wire.account_id, wire.hold_id))
        port = self.ports[shard]
        if not wire.add:
            self._set_mark(mark, False)
            return Reply(200, b"{}")
        state, status_now = port.account_state(destination_id), port.status_now(destination_id)
        if (state is None) != (status_now is None) or (
            status_now == STATUS_CLOSED and state is not None and state[ACCOUNT_STATUS] != STATUS_CLOSED
        ):
            return unavailable_reply(f"account {destination_id} is changing; retry with the same id")
        if state is None:
            return Reply(200, msgspec.json.encode(DestinationWire(False)))
        self._set_mark(mark, True)
        account = Account(*state[: len(ACCOUNT_FIELDS)])
        return Reply(
            200, msgspec.json.encode(DestinationWire(True, account.currency, account.status, account.is_system))
        )

    def _set_mark(self, mark: tuple[str, str], add: bool) -> None:
        shard = self.shard_of(mark[0])
        if shard is None or shard not in self.owned:
            return
        self.remote_marks.change(mark, add)
        self.ports[shard].expect_inbound(mark[0], mark[1], add)

    def _holds_naming(self, body: bytes) -> Reply:
        try:
            targets = set(msgspec.json.decode(body, type=HoldsNamingAsk).shards)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Reply(422, problem("validation_error", 422, f"not a question of holds: {exc}"))
        sources = self._sources()
        holds = [] if self.holds_naming is None else self.holds_naming(targets, sources)
        return Reply(200, msgspec.json.encode(HoldsNamingWire(sorted(sources), holds)))

    def _sources(self) -> set[int]:
        """The shards this node answers for: owned, recovered, their holds known to the service."""
        return {s for s in self.indexed if s in self.owned and (e := self.ports[s].engine) is not None and e.ready}

    def _marks_unknown(self, shard: int) -> bool:
        engine = self.ports[shard].engine
        return engine is not None and engine.ready and engine.ledger.remote_marks_unknown

    async def _sync_marks(self) -> None:
        """Ask every node (this one included) which of its holds name accounts of the shards
        owned here; mark what is missing, drop what is no longer there (``node.remote_marks``).
        Once every shard of the fleet has answered, closes on those shards are served."""
        targets = {s for s in self.owned if (e := self.ports[s].engine) is not None and e.ready}
        if not targets or self.holds_naming is None:
            return
        asked, asked_at = time.monotonic(), self.remote_marks.stamp
        answered = self._sources()
        holds = self.holds_naming(targets, answered)
        if self.forwarder is None:  # no fleet secret: no hold of another node can name an account here
            answered = set(range(len(self.ports)))
        else:
            ask = msgspec.json.encode(HoldsNamingAsk(sorted(targets)))
            urls = sorted(set(self.owner_urls.values()))
            replies = await asyncio.gather(*(self.forwarder.internal(url, "holds-naming", ask) for url in urls))
            for url, reply in zip(urls, replies, strict=True):
                if reply.status != 200:
                    log.warning("node %s: %s did not say which holds name our accounts (%d)", self.node.id, url,
                                reply.status)  # fmt: skip
                    continue
                told = msgspec.json.decode(reply.body, type=HoldsNamingWire)
                answered |= set(told.sources)
                holds.extend(told.holds)
        wanted = [(d, inbound_hold_mark(a, h)) for a, h, d in holds if self.shard_of(d) in targets]
        added, dropped = self.remote_marks.resync(asked_at, wanted, answered, targets)
        for destination_id, mark in added:
            self._mark_port(destination_id, mark, True)
        for destination_id, mark in dropped:
            self._mark_port(destination_id, mark, False)
        self.remote_marks.forget_older(asked_at)
        if answered >= set(range(len(self.ports))):
            # (after the answers: a partner that arrived while they came makes its shard wait)
            for shard in {s for s in targets if self._arrivals_settled(s, asked)}:
                engine = self.ports[shard].engine
                if engine is not None and engine.ledger.remote_marks_unknown:
                    engine.ledger.remote_marks_unknown = False
                    log.info("node %s: shard %d knows every hold of the fleet naming its accounts", self.node.id,
                             shard)  # fmt: skip

    def _mark_port(self, destination_id: str, mark: str, add: bool) -> None:
        shard = self.shard_of(destination_id)
        if shard is not None and shard in self.owned:
            self.ports[shard].expect_inbound(destination_id, mark, add)

    def holds_indexed(self, shard: int) -> None:
        """The service knows the holds of ``shard`` (recovered here) that name other shards."""
        if shard in self.owned:
            self.indexed.add(shard)

    async def mark_hold(self, account_id: str, hold_id: str, destination_id: str) -> c.RemoteAccount | Reply:
        """Before a hold naming an account of another node's shard is placed: that node marks
        it (a close there answers ``account_not_empty`` from now on) and says what it has
        committed of the account; 503 if it cannot be reached (nothing is placed)."""
        shard = self.shard_of(destination_id)
        owner = None if shard is None else await self._owner_of(shard)
        if self.forwarder is None or owner is None:
            return unavailable_reply(f"the node that owns account {destination_id}'s shard cannot be reached now")
        wire = HoldMarkWire(account_id, hold_id, destination_id, True)
        reply = await self.forwarder.internal(owner, f"shards/{shard}/hold-mark", msgspec.json.encode(wire))
        if reply.status != 200:
            return reply if reply.status == 503 else unavailable_reply(f"marking the hold failed ({reply.status})")
        seen = msgspec.json.decode(reply.body, type=DestinationWire)
        return c.RemoteAccount(seen.found, seen.currency, seen.status, seen.is_system)

    def drop_hold_mark(self, account_id: str, hold_id: str, destination_id: str) -> None:
        """A hold naming an account of another node's shard is settled (or was not placed): its
        mark there goes, in the background (if it is lost, that node's next sync drops it)."""
        shard = self.shard_of(destination_id)
        if shard is None or self.forwarder is None:
            return
        forwarder = self.forwarder
        wire = msgspec.json.encode(HoldMarkWire(account_id, hold_id, destination_id, False))

        async def drop() -> object:
            owner = await self._owner_of(shard)
            return None if owner is None else await forwarder.internal(owner, f"shards/{shard}/hold-mark", wire)

        task: asyncio.Task[object] = asyncio.ensure_future(drop())
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def key_written(self, row: Row) -> None:
        try:
            await self.directory.put_keys([row], now_ms())
        except DirectoryError as exc:  # the next start or takeover of its shard writes it again
            log.warning("node %s: a key change did not reach the directory: %s", self.node.id, exc)

    async def _sync_keys(self) -> None:
        """Keys: those of owned shards that have recovered go to the directory (once per
        ownership); those of other nodes' shards written since the last read come back."""
        for shard_id in self.owned:
            engine = self.ports[shard_id].engine
            if shard_id not in self._keys_pushed and engine is not None and engine.ready:
                await self.directory.put_keys(await self.ports[shard_id].load_keys(), now_ms())
                self._keys_pushed.add(shard_id)
        rows = await self.directory.keys_written_since(max(0, self._keys_read_to - KEY_CLOCK_MARGIN_MS))
        for row in rows:
            self._keys_read_to = max(self._keys_read_to, int(row[-1]))
            if self.on_key is not None and self.shard_elsewhere(row[1]) is not None:
                self.on_key(tuple(row[:-1]))  # (own shards: the shard's table is the record)

    async def _sync_placements(self) -> None:
        """The overrides written since the last read (every tick: a node learns of a move
        within about a second); the first read, at start, brings them all."""
        version, changes = await self.directory.placements_since(self._placements_read_to)
        if changes:
            self.placement.override(changes)
            log.info("node %s: %d placement overrides changed (version %d, %d in force)", self.node.id,
                     len(changes), version, len(self.placement.overrides))  # fmt: skip
        self._placements_read_to = version

    async def _owner_of(self, shard: int) -> str | None:
        """The owner's URL as last read; not known (a node just started, a takeover just
        done): read the directory again now, at most every ``OWNERS_REREAD_S``."""
        owner = self.owner_urls.get(shard)
        if owner is None and time.monotonic() - self._owners_read_at >= OWNERS_REREAD_S:
            self._owners_read_at = time.monotonic()
            try:
                await self._read_owners()
            except DirectoryError as exc:
                log.warning("node %s: the directory did not answer (%s)", self.node.id, exc)
            owner = self.owner_urls.get(shard)
        return owner

    async def _read_owners(self) -> None:
        """Who owns which shard now (their URLs), for forwarding."""
        now = now_ms()
        urls = {node.id: node.url for node in await self.directory.nodes()}
        self.owner_urls = {
            o.shard_id: urls[o.node_id]
            for o in await self.directory.ownerships()
            if o.lease_expires_at_ms >= now and o.node_id in urls and o.node_id != self.node.id
        }

    def _own(self, shard: ShardRecord, ownership: Ownership, *, taken_over: bool = False) -> ShardEngine:
        self.owned[shard.id] = ownership
        self.indexed.discard(shard.id)
        self.remote_marks.forget_shard(shard.id)
        engine = self.make_engine(shard, ownership.epoch)
        engine.remote_marks_start_unknown = True  # closes wait until every node has answered (_sync_marks)
        self.ports[shard.id].own(engine, taken_over=taken_over)
        log.info("node %s owns shard %d (epoch %d)", self.node.id, shard.id, ownership.epoch)
        return engine

    async def run(self) -> None:
        """Renew, take, heartbeat, every third of the lease, until cancelled."""
        while True:
            began = time.monotonic()
            try:
                await self.step()
            except DirectoryError as exc:
                log.warning("node %s: the directory did not answer (%s); serving on", self.node.id, exc)
            await asyncio.sleep(max(0.05, min(self.lease_ms / 3000, KEY_POLL_S) - (time.monotonic() - began)))

    async def step(self) -> None:
        await self._renew_and_take()
        await self._sync_placements()
        await self._sync_keys()
        due = time.monotonic() - self._finished_at >= FINISH_EVERY_S
        if time.monotonic() - self._marks_synced_at >= MARKS_RESYNC_S or any(map(self._marks_unknown, self.owned)):
            self._marks_synced_at = time.monotonic()
            try:
                await self._sync_marks()
            except Exception as exc:  # noqa: BLE001 (a node answering garbage: the next round asks again)
                log.warning("node %s: asking which holds name our accounts failed: %r", self.node.id, exc)
        if due:
            self._finished_at = time.monotonic()
        if self.finish_pending is not None and due:
            try:
                finished = await self.finish_pending()
            except Exception as exc:  # noqa: BLE001 (storage away, an owner down: the next round retries)
                log.warning("node %s: finishing transfers in flight failed: %r", self.node.id, exc)
            else:
                if finished:
                    log.info("node %s: finished %d transfers in flight", self.node.id, finished)

    async def _renew_and_take(self) -> None:
        await self.directory.heartbeat(NodeRecord(self.node.id, self.node.url, self.node.region, now_ms()))
        candidates = await self._candidates()
        mine = {shard.id for shard in candidates}
        for shard_id, ownership in list(self.owned.items()):
            if shard_id not in mine:  # the operator placed it elsewhere: hand it over cleanly
                await self._hand_over(shard_id, ownership)
                continue
            renewed = await self.directory.renew(ownership, now_ms(), self.lease_ms)
            port = self.ports[shard_id]
            fenced = port.engine is not None and port.engine.state == FENCED
            if renewed is None or fenced:
                await self._lose(shard_id, "its lease was taken" if renewed is None else "it was fenced")
            else:
                self.owned[shard_id] = renewed
        for shard in candidates:
            if shard.id in self.owned or shard.id >= len(self.ports):
                continue
            expired_at = await self._lease_end(shard.id)
            taken = await self.directory.acquire(shard.id, self.node.id, now_ms(), self.lease_ms)
            if taken is not None:
                engine = self._own(shard, taken, taken_over=True)
                self._starting[shard.id] = asyncio.create_task(self._take_over(engine, expired_at))
        await self._read_owners()

    async def _lease_end(self, shard_id: int) -> int | None:
        for ownership in await self.directory.ownerships():
            if ownership.shard_id == shard_id:
                return ownership.lease_expires_at_ms
        return None

    async def _take_over(self, engine: ShardEngine, lease_ended_ms: int | None) -> None:
        """Recover the shard (its storage fences first), then hand it to the service."""
        await engine.start()
        if engine.state == FENCED:  # a newer owner already
            return
        if lease_ended_ms:
            self.taken_over_at[engine.shard] = max(0.0, (now_ms() - lease_ended_ms) / 1000)
        log.info("node %s took shard %d over (%.2fs after the former lease ended)",
                 self.node.id, engine.shard, self.taken_over_at.get(engine.shard, 0.0))  # fmt: skip
        if self.on_taken_over is not None:
            result = self.on_taken_over(self.ports[engine.shard])
            if asyncio.iscoroutine(result):
                await result

    async def _lose(self, shard_id: int, why: str) -> None:
        self.owned.pop(shard_id, None)
        self.indexed.discard(shard_id)
        self._keys_pushed.discard(shard_id)
        starting = self._starting.pop(shard_id, None)
        if starting is not None and not starting.done():
            starting.cancel()
        engine = self.ports[shard_id].disown()
        log.error("node %s lost shard %d: %s", self.node.id, shard_id, why)
        if engine is not None:
            await engine.stop(checkpoint=False)

    async def _hand_over(self, shard_id: int, ownership: Ownership) -> None:
        """Stop the shard (drained, a last checkpoint) and end the lease now."""
        self.owned.pop(shard_id, None)
        self.indexed.discard(shard_id)
        self._keys_pushed.discard(shard_id)
        engine = self.ports[shard_id].disown()
        if engine is not None:
            await engine.stop()
        await self.directory.release(ownership)
        log.info("node %s handed shard %d over (no longer assigned to it)", self.node.id, shard_id)

    async def release(self) -> None:
        """A clean stop: the leases end now, so a standby need not wait for them to expire."""
        for drop in self._drops:  # (a mark left on another node: its next resync drops it)
            drop.cancel()
        if self.forwarder is not None:
            await self.forwarder.close()
        for task in self._starting.values():
            task.cancel()
        for ownership in list(self.owned.values()):
            try:
                await self.directory.release(ownership)
            except DirectoryError as exc:
                log.warning("node %s: lease of shard %d not released: %s", self.node.id, ownership.shard_id, exc)
        self.owned.clear()
        await self.directory.close()
