"""The shards of one process behind one facade: routing by id, account placement, API keys.

Account ids encode region and home shard (``US-3-9f2c...``), so a request is routed
without a look-up. A child lives on its parent's shard, so a partner's subtree (and
every parent/child transfer) stays on one shard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from balance import views
from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import moves
from balance.domain.cross_shard import CAPTURE_LEG, TRANSFER_IN_PROGRESS, capture_leg_id, is_capture_leg, leg_status
from balance.domain.ids import client_account_suffix
from balance.domain.ledger import INBOUND_HOLD, inbound_hold_mark
from balance.domain.model import (
    ACCOUNT_FIELDS,
    ACCOUNT_STATUS,
    HOLD_CAPTURED,
    HOLD_CAPTURED_AMOUNT,
    HOLD_CURRENCY,
    HOLD_DESCRIPTION,
    HOLD_DESTINATION,
    HOLD_METADATA,
    HOLD_MOVED,
    HOLD_STATUS,
    JOURNAL_CREATED_AT,
    JOURNAL_SEQ,
    STATUS_CLOSED,
    STATUS_MOVED,
    Account,
)
from balance.domain.moves import MOVED_AWAY
from balance.engine.partner_move import ARRIVAL_ACCOUNTS, DONE, MOVED_OUT, ROLLED_BACK, MoveRecord, run_move
from balance.engine.replies import Collector, Reply, Unavailable, unavailable_reply
from balance.engine.shard import ShardEngine
from balance.keys import KeyRecord, KeyRegistry, hash_key
from balance.node import crash_points
from balance.shards import InProcessShard, Placement, ShardPort, ShardsElsewhere, shard_in_id
from balance.storage.base import StorageError

ADMIN = a.ADMIN

log = logging.getLogger("balance.service")


shard_of = shard_in_id  # the shard an id names (``Placement.shard_of`` also checks it exists)


def new_account_id(region: str, shard: int) -> str:
    return f"{region}-{shard}-{secrets.token_hex(8)}"


MOVE_WAIT_S = 5.0  # how long a request of a moving subtree waits for the switch


class MoveRefused(Exception):
    """A move that cannot start (unknown account, bad shard, not a top-level partner)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def _moving(reply: Reply) -> bool:
    """A refusal because of a partner move (only looked at on a 503)."""
    body = reply.body
    return b'"account_moving"' in body or b'"account_moved"' in body


def not_found(account_id: str) -> Reply:
    return Reply(404, views.problem(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found"))


class BalanceService:
    """Routes commands to shard engines and decides who may act on which account."""

    def __init__(
        self,
        engines: Sequence[ShardEngine],
        admin_key: str,
        *,
        admin_key_hash: str | None = None,
        ports: Sequence[ShardPort] | None = None,
    ) -> None:
        self.engines = list(engines)  # for tests, the demo and metrics: the service itself uses the ports
        # A node of a fleet passes its ports (``balance.node.ports``: the engines it owns come and go).
        self.shards: list[ShardPort] = (
            [InProcessShard(engine) for engine in self.engines] if ports is None else list(ports)
        )
        self.placement = Placement(len(self.shards))
        self.node: ShardsElsewhere | None = None  # a fleet node: which accounts live on shards it does not own
        # A key from the environment is compared as is (no hash per admin request); a generated
        # one is known by its hash only (kept in the data directory).
        self._admin_key = admin_key if admin_key_hash is None else None
        self._admin_hash = admin_key_hash or hash_key(admin_key)
        self.keys = KeyRegistry()
        self._keys_creating: dict[tuple[str, str], asyncio.Future[None]] = {}  # (account, client id) in flight
        # The loop the service runs in, taken once at start (get_running_loop() is a system call
        # per call in CPython 3.11); a service used without start() asks for it each time.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False  # start() has loaded the keys and finished pending transfers
        # A fleet node: its holds naming accounts of other shards, pending or being captured
        # ((account, hold id) -> destination), and those being placed (marked, not yet
        # answered): what it tells a node that asks which holds name its accounts.
        self._remote_holds: dict[tuple[str, str], str] = {}
        self._placing: dict[tuple[str, str], str] = {}
        # Where an earlier version kept unfinished partner moves (the data directory): resumed at
        # start, then removed. A move's record is now in its source shard's database.
        self.moves_dir: Path | None = None
        # Called after each step of a move (a port: tests put a crash after a step here; a
        # compiled class's methods cannot be replaced, an attribute can).
        self.save_move: Callable[[MoveRecord], None] = self._save_move
        self._resuming: set[asyncio.Task[list[dict[str, object]]]] = set()  # a node's moves being resumed
        self.move_part_accounts = ARRIVAL_ACCOUNTS  # accounts per commit of a move's arrival (a port: tests)
        self._moves_running: set[str] = set()  # moves this process runs now (a resume leaves them be)
        for port in self.shards:
            port.watch(self._committed_on, functools.partial(self._mark_remote_holds, port, True))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(port.start() for port in self.shards))
        await self._after_recovery()
        self._started = True

    async def _after_recovery(self) -> None:
        """The API keys, then the transfers a crash left half-done. Storage that fails here is
        waited for as recovery waits for it (one log line per attempt, the same backoff)."""
        if self.engines and self.node is None:  # where moved accounts live: their marks go there
            self._placements_from_shards()
        for port in self.shards:  # before anything can close an account they name
            self._mark_remote_holds(port, False)
        attempt = 0
        while True:
            try:
                for port in self.shards:
                    for row in await port.load_keys():
                        self.keys.add(KeyRecord.from_row(row))
                await self.finish_pending_transfers()  # idempotent: a retry replays what was done
                if self.engines and self.node is None:  # a single process: moves are its own
                    self._placements_from_shards()
                    await self.resume_moves()
                elif self.node is not None:  # a node: the moves out of the shards it owns, meanwhile
                    self._resume_in_background(None)
                return
            except StorageError as exc:
                attempt += 1
                backoff = self.shards[0].backoff
                delay = backoff.delay(attempt)
                log.warning("start: keys and pending transfers, attempt %d failed, retrying in %.2fs: %s",
                            attempt, delay, exc)  # fmt: skip
                await backoff.sleep(delay)

    async def stop(self) -> None:
        await asyncio.gather(*(port.stop() for port in self.shards))

    async def shard_taken_over(self, port: ShardPort) -> None:
        """A node has recovered a shard it took over: its holds naming other shards' accounts
        (marked there), its keys, then its unfinished transfers."""
        self._resume_in_background(port)  # the moves out of it a former owner left unfinished
        self._mark_remote_holds(port, True)
        for row in await port.load_keys():
            self.keys.add(KeyRecord.from_row(row))
        await self.finish_pending_transfers()

    def shard_statuses(self) -> dict[str, dict[str, object]]:
        """``/readyz``: each shard this process serves, as its port reports it."""
        statuses = {str(port.shard): port.status() for port in self.shards}
        return {shard: status for shard, status in statuses.items() if status is not None}

    def committed_seqs(self) -> list[int]:
        """Each shard's next seq after what is committed (batches still being written not counted)."""
        return [port.committed_seq() for port in self.shards]

    @property
    def ready(self) -> bool:
        """Every shard serves and the keys are loaded (until then a partner key would look unknown)."""
        return self._started and all(port.ready for port in self.shards)

    def port_for(self, account_id: str) -> ShardPort | None:
        """The port of the shard ``account_id`` lives on (None: no shard has it)."""
        shard = self.placement.shard_of(account_id)
        return None if shard is None else self.shards[shard]

    def engine_for(self, account_id: str) -> ShardEngine | None:
        """The engine itself (tests and tools that look inside a shard; the service uses ports)."""
        shard = self.placement.shard_of(account_id)
        return None if shard is None else self.engines[shard]

    # ---- auth ----------------------------------------------------------------------------

    def actor(self, key: str | None) -> a.Actor | None:
        """Who a key is, with what it may still do (its account frozen: reads only), or None for
        a missing, unknown or revoked key, or one whose account is closed (answered 401)."""
        if not key:
            return None
        if self._admin_key is not None:
            if hmac.compare_digest(key.encode(), self._admin_key.encode()):
                return a.ADMIN_ACTOR
            key_hash = hash_key(key)
        else:
            key_hash = hash_key(key)
            if hmac.compare_digest(key_hash, self._admin_hash):
                return a.ADMIN_ACTOR
        record = self.keys.live(key_hash)
        if record is None:
            return None
        return self._actor_of(record)

    def current(self, actor: a.Actor) -> a.Actor | None:
        """An actor found earlier in this request (before its body was read), as it stands now:
        None if its key was revoked or its account closed since, reads only if frozen since.
        The key is not hashed again: its record is found by its id."""
        if actor is a.ADMIN_ACTOR:
            return actor
        record = self.keys.by_id.get(actor.key_id)
        if record is None or record.revoked_at is not None:
            return None
        return self._actor_of(record)

    def _actor_of(self, record: KeyRecord) -> a.Actor | None:
        """A live key's actor with what its account's status lets it do now."""
        port = self.port_for(record.account_id)
        status = None if port is None else port.account_status(record.account_id)
        if status is None and self.node is not None and self.node.shard_elsewhere(record.account_id) is not None:
            # A fleet node, the key's account on another node's shard: the key is authenticated
            # here (its hash, not revoked); what it may do is decided by that node, which gets
            # the request (a partner key acts on its own subtree: one shard, always forwarded).
            return record.actor
        power = a.key_power(record.scopes, status)
        if power is None:
            return None
        return record.actor if power == record.scopes else a.Actor(record.actor.principal, power, record.key_id)

    def principal(self, key: str | None) -> str | None:
        """ADMIN, the account id a key belongs to, or None (``actor`` says what it may do)."""
        actor = self.actor(key)
        return None if actor is None else actor.principal

    def chain(self, account_id: str) -> tuple[str, ...]:
        """``account_id`` and its ancestors (a child lives on its parent's shard)."""
        port = self.port_for(account_id)
        if port is None:
            return (account_id,)
        return a.chain(port.parent_of, account_id)

    def may_act_on(self, principal: str, account_id: str) -> bool:
        """Admin acts on everything; a partner key on its own account and its descendants."""
        if principal == ADMIN:
            return True
        engine = self.port_for(account_id)
        current: str | None = account_id
        for _ in range(64):  # the tree is shallow; the bound guards against a cycle
            if current is None or engine is None:
                return False
            if current == principal:
                return True
            current = engine.parent_of(current)
        return False

    # ---- commands ------------------------------------------------------------------------

    async def create_account(self, cmd_without_id: c.CreateAccount) -> Reply:
        """Place the account (child: parent's shard; top level: least-filled shard) and create it."""
        if cmd_without_id.parent_id is not None:
            engine = self.port_for(cmd_without_id.parent_id)
            if engine is None:
                return not_found(cmd_without_id.parent_id)
        elif cmd_without_id.client_id is not None:  # a retry must find the shard of the first try
            suffix = client_account_suffix(None, cmd_without_id.client_id)
            engine = self.shards[int(suffix, 16) % len(self.shards)]
        else:
            engine = self.shards[self.placement.new_top_level([port.account_count() for port in self.shards])]
        if cmd_without_id.client_id is None:
            account_id = new_account_id(cmd_without_id.region, engine.shard)
        else:
            suffix = client_account_suffix(cmd_without_id.parent_id, cmd_without_id.client_id)
            account_id = f"{cmd_without_id.region}-{engine.shard}-{suffix}"
            moved = self.placement.created_before(cmd_without_id.region, cmd_without_id.parent_id, suffix)
            if moved is not None:  # made by an earlier try, moved since: the retry replays it there
                account_id = moved
                port = self.port_for(moved)
                if port is None:
                    return not_found(moved)
                engine = port
        return await engine.execute(dataclasses.replace(cmd_without_id, account_id=account_id))

    async def create_key(
        self, account_id: str, scopes: int = a.PARTNER_DEFAULT, client_id: str | None = None
    ) -> tuple[Reply, str | None]:
        """A new key (its secret shown in this answer only). With ``client_id``: the same id
        and scopes again answer the same key id, ``replayed``, without the secret."""
        port = self.port_for(account_id)
        if port is None:
            return not_found(account_id), None
        if client_id is None:
            return await self._new_key(port, account_id, scopes, None)
        slot = (account_id, client_id)
        while (creating := self._keys_creating.get(slot)) is not None:
            await asyncio.shield(creating)  # the same id in flight: its answer decides
        existing = self.keys.by_client_id.get(slot)
        if existing is not None:
            if existing.scopes != scopes:
                detail = f"key {client_id} was already created with other scopes"
                return Reply(409, views.problem(e.IDEMPOTENCY_CONFLICT, 409, detail)), None
            return Reply(201, views.encoder.encode(_key_answer(existing, None, replayed=True)), True), None
        done = self._keys_creating[slot] = (self._loop or asyncio.get_running_loop()).create_future()
        try:
            return await self._new_key(port, account_id, scopes, client_id)
        finally:
            del self._keys_creating[slot]
            done.set_result(None)

    async def _new_key(
        self, port: ShardPort, account_id: str, scopes: int, client_id: str | None
    ) -> tuple[Reply, str | None]:
        key = "bk_" + secrets.token_urlsafe(32)
        key_hash, key_id, created_at = hash_key(key), "key_" + secrets.token_hex(8), port.clock()
        command = c.CreateKey(account_id, key_hash, key_id, key[:8], scopes, client_id, created_at)
        reply = await port.execute(command)
        if reply.status != 201:
            return reply, None
        record = KeyRecord.from_row((key_hash, account_id, created_at, key_id, key[:8], scopes, None, client_id))
        self.keys.add(record)
        if self.node is not None:  # a fleet: every node authenticates every key
            await self.node.key_written(record.row())
        return Reply(201, views.encoder.encode(_key_answer(record, key, replayed=False))), key

    async def revoke_key(self, account_id: str, key_id: str) -> Reply:
        """The key stops working at once (in memory before the write: a failed write still
        leaves it refused here, and the client's retry stores it)."""
        record = self.keys.by_id.get(key_id)
        port = self.port_for(account_id)
        if record is None or record.account_id != account_id or port is None:
            return Reply(404, views.problem(e.KEY_NOT_FOUND, 404, f"key {key_id} not found"))
        if record.revoked_at is None:
            record.revoked_at = port.clock()
        reply = await port.execute(c.RevokeKey(account_id, record.row()))
        if reply.status != 200:
            return reply
        if self.node is not None:  # a fleet: refused on every node at their next read (within a second)
            await self.node.key_written(record.row())
        return Reply(200, views.encoder.encode(record.view()))

    def list_keys(self, account_id: str) -> list[dict[str, object]]:
        return [record.view() for record in self.keys.of_account(account_id)]

    async def execute(self, command: c.Command) -> Reply:
        return (await self.run_many([command]))[0]

    async def run_many(self, commands: Sequence[c.Command], wait_moves: bool = True) -> list[Reply]:
        """Run commands in order (same-account order is kept: one shard, one queue), all
        answered through one collector (a batch request makes no future per operation)."""
        collector = Collector(len(commands), self._loop or asyncio.get_running_loop())
        across: list[tuple[int, asyncio.Task[Reply]]] = []
        remote_holds: list[tuple[c.PlaceHold, ShardPort, ShardPort]] | None = None  # made when one comes
        for index, command in enumerate(commands):
            account_id = command.account_id
            engine = self.port_for(account_id)
            if engine is None:
                collector.answer(index, not_found(account_id))
                continue
            if isinstance(command, c.Transfer):
                target = self.port_for(command.to_account_id)
                if target is not None and target is not engine:
                    across.append((index, asyncio.ensure_future(self._transfer_across_shards(command, engine, target))))
                    continue
            elif isinstance(command, c.PlaceHold) and command.destination_account_id is not None:
                node = self.node
                if node is not None and node.shard_elsewhere(command.destination_account_id) is not None:
                    if node.shard_elsewhere(account_id) is None:  # (else: this shard is not served here: 503)
                        across.append((index, asyncio.ensure_future(self._hold_across_nodes(command, engine))))
                        continue
                other = self.port_for(command.destination_account_id)
                if other is not None and other is not engine:
                    remote = self._with_remote_destination(command, other)
                    if isinstance(remote, Reply):
                        collector.answer(index, remote)
                        continue
                    command = remote
                    if remote_holds is None:
                        remote_holds = []
                    remote_holds.append((command, engine, other))
            try:
                engine.enqueue_into(command, collector, index)
            except Unavailable as exc:
                collector.answer(index, unavailable_reply(exc.detail))
        for index, task in across:
            collector.answer(index, await task)
        if commands:
            await collector.future
        replies: list[Reply] = collector.replies  # type: ignore[assignment]  # every slot answered
        if remote_holds is not None:
            self._unmark_holds_not_placed(remote_holds)
        for index, reply in enumerate(replies):
            status = reply.status
            if status == TRANSFER_IN_PROGRESS:  # a hold's capture on its way to another shard
                reply = replies[index] = await self._finish_capture(commands[index], reply)
                status = reply.status  # (its payee moving: waited for as the capture's own move)
            if status == 503 and wait_moves and _moving(reply):
                replies[index] = await self._after_move(commands[index], reply)
        return replies

    async def _after_move(self, command: c.Command, reply: Reply) -> Reply:
        """The account is being moved (or was, and this placement is behind): wait for the
        switch, bounded, then go where it lives now (``docs/moves.md``)."""
        deadline = time.monotonic() + MOVE_WAIT_S
        node = self.node
        while time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            if node is not None and node.shard_elsewhere(command.account_id) is not None:
                return reply  # it lives on another node now: the app forwards it there
            reply = (await self.run_many([command], wait_moves=False))[0]
            if not (reply.status == 503 and _moving(reply)):
                return reply
        return reply

    # ---- partner moves -------------------------------------------------------------------

    async def move_partner(self, root_id: str, to_shard: int, move_id: str | None = None) -> dict[str, object]:
        """Move a top-level partner with its subtree to ``to_shard`` (of this process, or of
        another node of the fleet); answers when it is done or rolled back (the steps:
        ``engine.partner_move``). A fleet node runs it for a partner of a shard it owns."""
        source = self._engine_here(root_id)
        if source is None or root_id not in source.ledger.accounts:
            raise MoveRefused(e.ACCOUNT_NOT_FOUND, f"account {root_id} not found")
        if not 0 <= to_shard < len(self.shards):
            raise MoveRefused(e.MOVE_REFUSED, f"shard {to_shard} is not a shard of this service")
        if source.ledger.accounts[root_id].parent_id is not None:
            raise MoveRefused(e.MOVE_REFUSED, "only a top-level partner moves (with its whole subtree)")
        if source.shard == to_shard:
            raise MoveRefused(e.MOVE_REFUSED, f"account {root_id} is on shard {to_shard} already")
        record = MoveRecord(move_id or uuid.uuid4().hex[:24], root_id, source.shard, to_shard)
        return await self._run_move(record)

    def _engine_here(self, account_id: str) -> ShardEngine | None:
        """The engine of the account's shard when this process runs it."""
        port = self.port_for(account_id)
        engine = getattr(port, "engine", None)
        return engine if isinstance(engine, ShardEngine) else None

    async def _run_move(self, record: MoveRecord) -> dict[str, object]:
        started = time.monotonic()
        source = self.shards[record.from_shard]
        source_engine = getattr(source, "engine", None)
        if not isinstance(source_engine, ShardEngine):
            raise MoveRefused(e.UNAVAILABLE, f"shard {record.from_shard} is not served by this process now")
        target = self.shards[record.to_shard]
        target_engine = getattr(target, "engine", None)
        node = self.node
        arrive: ShardEngine | Callable[[c.MoveIn], Awaitable[Reply]]
        if isinstance(target_engine, ShardEngine) or node is None:
            arrive = target_engine if isinstance(target_engine, ShardEngine) else self.engines[record.to_shard]
        else:
            arrive = functools.partial(node.move_in, record.to_shard)
        self._moves_running.add(record.move_id)
        try:
            done = await run_move(
                source_engine, arrive, record, self.save_move, self._switch, part_accounts=self.move_part_accounts
            )
        finally:
            self._moves_running.discard(record.move_id)
        if done.step in (DONE, ROLLED_BACK) and self.moves_dir is not None:  # an earlier version's file
            done.remove(self.moves_dir / f"{done.move_id}.json")
        return {
            "move_id": done.move_id, "account_id": done.root_id, "from_shard": done.from_shard,
            "to_shard": done.to_shard, "status": done.step, "accounts": len(done.accounts),
            "holds": len(done.holds), "seconds": round(time.monotonic() - started, 3), "error": done.error or None,
        }  # fmt: skip

    def _save_move(self, record: MoveRecord) -> None:
        """After each step (what is durable is in the source shard's database already)."""
        if self.node is not None:
            arriving = record.step == MOVED_OUT and record.arrived > 0  # between parts of the arrival
            crash_points.reached("move_arriving" if arriving else f"move_{record.step}")

    async def _switch(self, account_ids: list[str], to_shard: int) -> None:
        """The moved accounts are routed to ``to_shard`` from now on (no entry where the id says
        so); a fleet node writes it to the directory first (every node reads it within ~1 s)."""
        changes: list[tuple[str, int | None]] = [
            (account_id, None if shard_in_id(account_id) == to_shard else to_shard) for account_id in account_ids
        ]
        moved = set(account_ids)
        if self.node is not None:
            await self.node.set_placements(changes)
            # The subtree's holds now live on the target's node, which counts them (and the
            # target's node learns of other nodes' holds naming the moved accounts by asking:
            # ``ShardKeeper.moved_in``); the shard they left keeps no mark of them.
            node = self.node
            for key in [k for k in self._remote_holds if k[0] in moved and node.shard_elsewhere(k[0]) is not None]:
                self._remote_holds.pop(key, None)
            for port in self.shards:
                engine = getattr(port, "engine", None)
                if isinstance(engine, ShardEngine):
                    moves.forget_marks(engine.ledger, moved)
        else:  # in the same step as the routing (no await between): no mark is lost meanwhile
            self._remark(moved, to_shard)
        self.placement.override(changes)

    def _remark(self, moved: set[str], to_shard: int) -> None:
        """The holds of the other shards naming the moved accounts are marked on ``to_shard``
        (its own were marked by the move's arrival); the shards they left forget theirs. Holds
        settled from now on unmark them there (``_committed_on`` routes by the new placement)."""
        target = self.shards[to_shard]
        for engine in self.engines:
            if engine.shard == to_shard:
                continue
            moves.forget_marks(engine.ledger, moved)
            for account_id, hold_id, destination_id in moves.holds_naming(engine.ledger, moved):
                target.expect_inbound(destination_id, inbound_hold_mark(account_id, hold_id), True)

    def history_shards(self, account_id: str) -> list[int]:
        """The shards an account's history is on: where it lives, then those it was moved from
        (they keep the rows written there: ``Ledger.moving`` marks it moved away). A fleet node
        sees the marks of its own shards only: for an account that ever moved (the directory
        has a placement change naming it), every shard another node owns is read too (a shard
        it never lived on has no row of it)."""
        live = self.placement.shard_of(account_id)
        shards = [] if live is None else [live]
        for engine in self.engines:
            moving = engine.ledger.moving
            if moving and moving.get(account_id) == MOVED_AWAY and engine.shard not in shards:
                shards.append(engine.shard)
        node = self.node
        if node is not None and account_id in self.placement.moved:
            shards += [port.shard for port in self.shards if port.shard not in shards and not node.owns(port.shard)]
        return shards

    async def history_on(
        self, shard: int, account_id: str, limit: int, before_seq: int | None, since: int | None, until: int | None
    ) -> list[tuple[int, int, Any]] | Reply:
        """(created_at, seq, Txn) of the account's rows on ``shard``, newest first: read here,
        or asked of the node that owns it (a 503 Reply if it cannot be)."""
        node = self.node
        if node is not None and not node.owns(shard):
            return await node.history_elsewhere(shard, account_id, limit, before_seq, since, until)
        rows = await self.shards[shard].history(account_id, limit, before_seq, since, until)
        return [(row[JOURNAL_CREATED_AT], row[JOURNAL_SEQ], views.txn_view(row, shard)) for row in rows]

    async def hold_read(self, account_id: str, hold_id: str) -> Any:
        """A hold as ``GET …/holds/{hold_id}`` answers it: where the account lives, unless it
        left that shard (``moved``) or is not there (settled before a move): then as the other
        shards the account lived on have it, the one where it ended (or is pending) first.
        None: no shard has it; a 503 Reply: a shard that may have it cannot be asked."""
        found: Any = None
        node = self.node
        for shard in self.history_shards(account_id):
            if node is not None and not node.owns(shard):
                got = await node.hold_elsewhere(shard, account_id, hold_id)
                if isinstance(got, Reply):
                    return got
                status, view = got
            else:
                state = await self.shards[shard].hold_state(account_id, hold_id)
                status, view = ("", None) if state is None else (state[HOLD_STATUS], views.hold_view(state))
            if view is not None and status != HOLD_MOVED:
                return view
            if found is None:
                found = view
        return found

    def _placements_from_shards(self) -> None:
        """At start: where moved accounts live now, read off the shards themselves (an account
        is ``moved`` where it left and lives where it arrived), so nothing else need persist it."""
        changes: list[tuple[str, int | None]] = []
        for engine in self.engines:
            for account_id, mark in engine.ledger.moving.items():
                if mark != MOVED_AWAY:
                    continue
                for other in self.engines:
                    found = other.ledger.accounts.get(account_id)
                    if found is not None and found.status != STATUS_MOVED:
                        changes.append((account_id, None if shard_in_id(account_id) == other.shard else other.shard))
        self.placement.override(changes)

    async def resume_moves(self, port: ShardPort | None = None) -> list[dict[str, object]]:
        """Moves a stop, a crash or a lost node left unfinished: each run on to done (or rolled
        back). Those out of ``port``'s shard (None: of every shard served here), found in its
        database; at start, also those an earlier version kept in the data directory."""
        done: list[dict[str, object]] = []
        if port is None and self.moves_dir is not None and self.moves_dir.is_dir():
            for path in sorted(self.moves_dir.glob("*.json")):
                legacy = MoveRecord.load(path)
                if legacy.from_shard < len(self.shards) and self._engine_of(self.shards[legacy.from_shard]):
                    done.append(await self._run_move(legacy))
        for each in self.shards if port is None else [port]:
            engine = self._engine_of(each)
            if engine is None:
                continue
            for head, data in await engine.storage.unfinished_moves():
                record = MoveRecord.from_stored(head, data)
                if record.move_id not in self._moves_running:
                    log.info("shard %d: resuming partner move %s (%s)", engine.shard, record.move_id, record.step)
                    done.append(await self._run_move(record))
        return done

    @staticmethod
    def _engine_of(port: ShardPort) -> ShardEngine | None:
        engine = getattr(port, "engine", None)
        return engine if isinstance(engine, ShardEngine) else None

    def _resume_in_background(self, port: ShardPort | None) -> None:
        """A node: resume moves without holding up its start or takeover; tried again every
        second while it fails (storage, the directory or the target's node away) and the shards
        are still served here."""

        async def resume() -> list[dict[str, object]]:
            while True:
                engine = None if port is None else self._engine_of(port)
                try:
                    return await self.resume_moves(port)
                except Exception as exc:  # noqa: BLE001 (anything away: the next try goes on from the record)
                    log.warning("resuming partner moves failed, trying again in 1 s: %r", exc)
                await asyncio.sleep(1.0)
                if port is not None and self._engine_of(port) is not engine:
                    return []  # the shard went to another node: its owner resumes them

        task = asyncio.ensure_future(resume())
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    # ---- money across shards -------------------------------------------------------------

    def _unmark_holds_not_placed(self, holds: list[tuple[c.PlaceHold, ShardPort, ShardPort]]) -> None:
        """Holds naming another shard's account, answered: those not placed (refused, 503, or
        settled since) are no longer marked on their destination's shard (and on the shard it
        lives on now, if a move's switch marked it there meanwhile)."""
        for hold, engine, other in holds:
            destination_id = hold.destination_account_id
            assert destination_id is not None
            if not engine.hold_may_be_pending(hold.account_id, hold.op_id, destination_id):
                mark = inbound_hold_mark(hold.account_id, hold.op_id)
                other.expect_inbound(destination_id, mark, False)
                now = self.port_for(destination_id)
                if now is not None and now is not other:
                    now.expect_inbound(destination_id, mark, False)

    async def _hold_across_nodes(self, hold: c.PlaceHold, engine: ShardPort) -> Reply:
        """A hold naming an account of a shard another node owns: that node marks it and says
        what it has committed of the account (``ShardKeeper.mark_hold``), then the hold is
        placed here; not placed (refused, 503), its mark there goes. While it is being placed
        it counts among this node's holds naming that shard (a sync there keeps the mark)."""
        node, destination_id, key = self.node, hold.destination_account_id, (hold.account_id, hold.op_id)
        assert node is not None and destination_id is not None
        self._placing[key] = destination_id
        try:
            remote = await node.mark_hold(hold.account_id, hold.op_id, destination_id)
            if isinstance(remote, Reply):  # (the same id again too: sent again, it gets its first answer)
                return remote
            return await engine.execute(dataclasses.replace(hold, remote_destination=remote))
        finally:
            self._placing.pop(key, None)
            if key not in self._remote_holds and not engine.hold_may_be_pending(*key, destination_id):
                node.drop_hold_mark(hold.account_id, hold.op_id, destination_id)

    def holds_naming(self, shards: set[int], sources: set[int]) -> list[tuple[str, str, str]]:
        """(account, hold id, destination) of this node's holds on shards ``sources`` that name
        an account of shards ``shards``: pending, being placed, or captured with the money on its way."""
        of = self.placement.shard_of
        return [
            (account_id, hold_id, destination_id)
            for held in (self._remote_holds, self._placing)
            for (account_id, hold_id), destination_id in held.items()
            if of(destination_id) in shards and of(account_id) in sources
        ]

    def _index_committed(self, legs: list[tuple], holds: list[tuple[str, str, str, bool]]) -> None:  # type: ignore[type-arg]
        """A fleet node: the holds naming another shard's account a commit placed or settled.
        A capture's hold stays counted until its money has landed (``_finish_leg``); a hold
        settled otherwise loses its mark on the destination's node now."""
        node = self.node
        assert node is not None
        capturing = {(row[0], row[1]) for row in legs if is_capture_leg(row[1])}
        for account_id, hold_id, destination_id, pending in holds:
            key = (account_id, hold_id)
            if pending or (account_id, capture_leg_id(hold_id)) in capturing:
                self._remote_holds[key] = destination_id
            elif self._remote_holds.pop(key, None) is not None and node.shard_elsewhere(destination_id) is not None:
                node.drop_hold_mark(account_id, hold_id, destination_id)

    def _with_remote_destination(self, hold: c.PlaceHold, other: ShardPort) -> c.PlaceHold | Reply:
        """A hold naming an account of another shard: what that shard has committed of it goes
        with the command (the rule decides; nothing is recorded for where the account lives).

        The destination's shard marks the hold first (``ledger.inbound_hold_mark``), so a close
        applied from now on answers ``account_not_empty``; a close applied before and not yet
        committed (or a creation) answers 503 here, not a recorded refusal that may not hold.
        The mark goes when the hold's settling commits (``_committed_on``), or at once if the
        hold was not placed (``run_many``)."""
        destination_id = hold.destination_account_id
        assert destination_id is not None
        state, status_now = other.account_state(destination_id), other.status_now(destination_id)
        if (state is None) != (status_now is None) or (
            status_now == STATUS_CLOSED and state is not None and state[ACCOUNT_STATUS] != STATUS_CLOSED
        ):
            return unavailable_reply(f"account {destination_id} is changing; retry with the same id")
        if state is None:
            return dataclasses.replace(hold, remote_destination=c.RemoteAccount(False))
        other.expect_inbound(destination_id, inbound_hold_mark(hold.account_id, hold.op_id), True)
        account = Account(*state[: len(ACCOUNT_FIELDS)])
        remote = c.RemoteAccount(True, account.currency, account.status, account.is_system)
        return dataclasses.replace(hold, remote_destination=remote)

    def _committed_on(self, legs: list[tuple], holds: list[tuple[str, str, str, bool]]) -> None:  # type: ignore[type-arg]
        """A shard committed cross-shard legs or holds naming another shard's account: the
        target's shard learns of them now, before anything else runs (a close there waits).
        A leg's mark comes before its hold's goes (a capture: both in one commit)."""
        if self.node is not None:
            self._index_committed(legs, holds)
        for row in legs:  # ``schema.TRANSFER_COLUMNS``: source, id, target, ...
            to_account_id: str = row[2]
            target = self.port_for(to_account_id)
            if target is not None:
                target.expect_inbound(to_account_id, f"{row[0]}:{row[1]}", True)
        for account_id, hold_id, destination_id, pending in holds:
            target = self.port_for(destination_id)
            if target is not None:
                target.expect_inbound(destination_id, inbound_hold_mark(account_id, hold_id), pending)

    def _mark_remote_holds(self, port: ShardPort, reloaded: bool) -> None:
        """After ``port``'s shard was loaded: its pending holds naming another shard's account
        are marked there (after a reload, its marks of holds no longer pending go)."""
        loaded = port.take_remote_holds_loaded()
        if self.node is not None:  # what this node tells the others (``holds_naming``)
            if reloaded:
                of = self.placement.shard_of
                self._remote_holds = {k: d for k, d in self._remote_holds.items() if of(k[0]) != port.shard}
            self._remote_holds.update(loaded)
            self.node.holds_indexed(port.shard)
        wanted = {(destination_id, inbound_hold_mark(*key)) for key, destination_id in loaded.items()}
        for other in self.shards:
            if other is port or not reloaded:
                continue
            for account_id, mark in other.inbound_marks(INBOUND_HOLD):
                source_id = mark[len(INBOUND_HOLD) :].split(":", 1)[0]
                if self.placement.shard_of(source_id) == port.shard and (account_id, mark) not in wanted:
                    other.expect_inbound(account_id, mark, False)
        for destination_id, mark in wanted:
            target = self.port_for(destination_id)
            if target is not None:
                target.expect_inbound(destination_id, mark, True)

    async def _transfer_across_shards(self, transfer: c.Transfer, source: ShardPort, target: ShardPort) -> Reply:
        """Source leg (debit into transit), target leg (credit from transit, or a refusal),
        then the answer (``domain.cross_shard`` explains the steps).

        The source leg comes first and replays first: a transfer sent again answers what it
        answered, whatever became of its target since. A crash between the steps leaves a row
        in the source shard's ``transfers_pending``; ``start`` (and any retry of the same id)
        finishes it. Money in transit sits on the shards' transit accounts, so every shard's
        balances still sum to zero.
        """
        first = await source.execute(c.TransferOut(transfer))
        if first.status != TRANSFER_IN_PROGRESS:
            return first  # refused, unavailable, or the finished transfer replayed
        return await self._finish_leg(transfer, first, target, source)

    async def _finish_capture(self, command: c.Command, started: Reply) -> Reply:
        """A capture whose hold names an account of another shard: its money is in transit."""
        assert isinstance(command, c.CaptureHold)
        source = self.port_for(command.account_id)
        assert source is not None
        leg = capture_leg_id(command.hold_id)
        hold = await source.hold_state(command.account_id, command.hold_id)  # committed: captured
        if hold is not None and hold[HOLD_DESTINATION] is not None and hold[HOLD_STATUS] == HOLD_CAPTURED:
            transfer = c.Transfer(
                leg, command.account_id, hold[HOLD_DESTINATION], hold[HOLD_CAPTURED_AMOUNT], hold[HOLD_CURRENCY],
                hold[HOLD_DESCRIPTION], bytes(hold[HOLD_METADATA]),
            )  # fmt: skip
        else:  # the pending row says it
            rows = [row for row in await source.pending_transfers() if row[:2] == (command.account_id, leg)]
            if not rows:
                return unavailable_reply(f"capture of {command.hold_id} is in progress; retry with the same id")
            transfer = _pending_transfer(rows[0])
        target = self.port_for(transfer.to_account_id)
        assert target is not None
        return await self._finish_leg(transfer, started, target, source)

    async def _finish_leg(self, transfer: c.Transfer, started: Reply, target: ShardPort, source: ShardPort) -> Reply:
        """The target leg, then the source's final outcome: completed, or the money returned."""
        to_account_id, leg = transfer.to_account_id, f"{transfer.from_account_id}:{transfer.op_id}"
        target.expect_inbound(to_account_id, leg, True)  # closing it waits for this
        second = await target.execute(c.TransferIn(transfer))
        if second.status == 503:
            if _moving(second):  # the account moved away: the retry marks its new shard
                target.expect_inbound(to_account_id, leg, False)
            return second  # unavailable: still in flight; the client retries the same id, which finishes it
        target.expect_inbound(to_account_id, leg, False)
        if self.node is not None and is_capture_leg(transfer.op_id):  # its hold's mark there goes now
            hold_key = (transfer.from_account_id, transfer.op_id[len(CAPTURE_LEG) :])
            if (
                self._remote_holds.pop(hold_key, None) is not None
                and self.node.shard_elsewhere(to_account_id) is not None
            ):
                self.node.drop_hold_mark(*hold_key, to_account_id)
        if second.status == 201:
            final_status = leg_status(transfer.op_id)
            if final_status == 200:  # a capture: its answer is the hold and the payer's account
                final = started.body
            else:
                begun = _view_of(started.body)
                final = views.encoder.encode(
                    {
                        "transaction": begun["transaction"],
                        "accounts": [begun["account"], _view_of(second.body)["account"]],
                    }
                )
            done = await source.execute(
                c.CompleteTransfer(transfer.from_account_id, transfer.op_id, final, final_status)
            )
            if done.status != 200:
                return done
            return Reply(final_status, final, started.replayed)
        # Refused by the target (closed, frozen, not found...): the money goes back to the source.
        code = str(_view_of(second.body).get("code", ""))
        if code == e.IDEMPOTENCY_CONFLICT:  # the leg was made with another body: a bug, never a refusal
            raise e.InvariantViolation(f"transfer {transfer.op_id}: its target leg was made with another body")
        done = await source.execute(c.ReturnTransfer(transfer, second.status, second.body, code))
        if done.status != 200:
            return done
        return Reply(second.status, second.body, started.replayed)

    async def finish_pending_transfers(self) -> int:
        """Recovery: settle every cross-shard movement whose target leg was not settled."""
        pending = []
        for source in self.shards:
            for row in await source.pending_transfers():
                transfer = _pending_transfer(row)
                target = self.port_for(transfer.to_account_id)
                if target is None:
                    raise RuntimeError(f"pending transfer {transfer.op_id} to an unknown shard")
                # In flight until settled: the target may not be closed meanwhile (nor the source:
                # its shard's recovery marked it).
                target.expect_inbound(transfer.to_account_id, f"{transfer.from_account_id}:{transfer.op_id}", True)
                if self.node is not None and is_capture_leg(transfer.op_id):  # its hold's mark stays meanwhile
                    hold_key = (transfer.from_account_id, transfer.op_id[len(CAPTURE_LEG) :])
                    self._remote_holds[hold_key] = transfer.to_account_id
                pending.append((transfer, source, target))
        finished = 0
        for transfer, source, target in pending:
            first = await source.execute(c.ResumeLeg(transfer.from_account_id, transfer.op_id))
            if first.status == TRANSFER_IN_PROGRESS:
                reply = await self._finish_leg(transfer, Reply(first.status, first.body, True), target, source)
                finished += reply.status != 503
        return finished

    def account_state(self, account_id: str) -> tuple | None:  # type: ignore[type-arg]
        engine = self.port_for(account_id)
        return None if engine is None else engine.account_state(account_id)


def _key_answer(record: KeyRecord, key: str | None, *, replayed: bool) -> dict[str, object]:
    return {**record.view(), "key": key, "replayed": replayed}


def _pending_transfer(row: tuple) -> c.Transfer:  # type: ignore[type-arg]
    """A ``transfers_pending`` row (``schema.TRANSFER_COLUMNS``) as the movement it continues."""
    account_id, op_id, to_account_id, amount, currency, description, metadata, _ = row
    return c.Transfer(op_id, account_id, to_account_id, int(amount), currency, description, bytes(metadata))


def _view_of(body: bytes) -> dict[str, object]:
    return msgspec.json.decode(body)  # type: ignore[no-any-return]
