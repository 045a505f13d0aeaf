"""The shards of one process behind one facade: routing by id, account placement, API keys.

Account ids encode region and home shard (``US-3-9f2c...``), so a request is routed
without a look-up. A child lives on its parent's shard, so a partner's subtree (and
every parent/child transfer) stays on one shard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import Sequence

import msgspec

from balance import views
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS, capture_leg_id, leg_status
from balance.domain.model import (
    ACCOUNT_FIELDS,
    HOLD_CAPTURED,
    HOLD_CAPTURED_AMOUNT,
    HOLD_CURRENCY,
    HOLD_DESCRIPTION,
    HOLD_DESTINATION,
    HOLD_METADATA,
    HOLD_STATUS,
    Account,
)
from balance.engine.replies import Collector, Reply, Unavailable, unavailable_reply
from balance.engine.shard import ShardEngine
from balance.shards import InProcessShard, Placement, ShardPort, shard_in_id

ADMIN = "admin"


shard_of = shard_in_id  # the shard an id names (``Placement.shard_of`` also checks it exists)


def hash_key(key: str) -> str:
    """API keys are random 256-bit tokens: a plain SHA-256 is the right hash (no brute force)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_account_id(region: str, shard: int) -> str:
    return f"{region}-{shard}-{secrets.token_hex(8)}"


def not_found(account_id: str) -> Reply:
    return Reply(404, views.problem(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found"))


class BalanceService:
    """Routes commands to shard engines and decides who may act on which account."""

    def __init__(self, engines: Sequence[ShardEngine], admin_key: str) -> None:
        self.engines = list(engines)  # for tests, the demo and metrics: the service itself uses the ports
        self.placement = Placement(len(self.engines))
        self.shards: list[ShardPort] = [InProcessShard(engine) for engine in self.engines]
        self._admin_key = admin_key
        self._keys: dict[str, str] = {}  # key hash -> account id
        # The loop the service runs in, taken once at start (get_running_loop() is a system call
        # per call in CPython 3.11); a service used without start() asks for it each time.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(port.start() for port in self.shards))
        for port in self.shards:
            for key_hash, account_id in await port.load_keys():
                self._keys[key_hash] = account_id
        await self.finish_pending_transfers()

    async def stop(self) -> None:
        await asyncio.gather(*(port.stop() for port in self.shards))

    @property
    def ready(self) -> bool:
        return all(port.ready for port in self.shards)

    def port_for(self, account_id: str) -> ShardPort | None:
        """The port of the shard ``account_id`` lives on (None: no shard has it)."""
        shard = self.placement.shard_of(account_id)
        return None if shard is None else self.shards[shard]

    def engine_for(self, account_id: str) -> ShardEngine | None:
        """The engine itself (tests and tools that look inside a shard; the service uses ports)."""
        shard = self.placement.shard_of(account_id)
        return None if shard is None else self.engines[shard]

    # ---- auth ----------------------------------------------------------------------------

    def principal(self, key: str | None) -> str | None:
        """ADMIN, the account id a partner key belongs to, or None for a missing/unknown key."""
        if not key:
            return None
        if hmac.compare_digest(key.encode(), self._admin_key.encode()):
            return ADMIN
        return self._keys.get(hash_key(key))

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
        else:
            engine = self.shards[self.placement.new_top_level([port.account_count() for port in self.shards])]
        account_id = new_account_id(cmd_without_id.region, engine.shard)
        return await engine.execute(dataclasses.replace(cmd_without_id, account_id=account_id))

    async def create_key(self, account_id: str) -> tuple[Reply, str | None]:
        engine = self.port_for(account_id)
        if engine is None:
            return not_found(account_id), None
        key = "bk_" + secrets.token_urlsafe(32)
        key_hash = hash_key(key)
        reply = await engine.execute(c.CreateKey(account_id, key_hash))
        if reply.status != 201:
            return reply, None
        self._keys[key_hash] = account_id
        return Reply(201, views.encoder.encode({"key": key, "account_id": account_id})), key

    async def execute(self, command: c.Command) -> Reply:
        return (await self.run_many([command]))[0]

    async def run_many(self, commands: Sequence[c.Command]) -> list[Reply]:
        """Run commands in order (same-account order is kept: one shard, one queue), all
        answered through one collector (a batch request makes no future per operation)."""
        collector = Collector(len(commands), self._loop or asyncio.get_running_loop())
        across: list[tuple[int, asyncio.Task[Reply]]] = []
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
                command = self._with_remote_destination(command, engine)
            try:
                engine.enqueue_into(command, collector, index)
            except Unavailable as exc:
                collector.answer(index, unavailable_reply(exc.detail))
        for index, task in across:
            collector.answer(index, await task)
        if commands:
            await collector.future
        replies: list[Reply] = collector.replies  # type: ignore[assignment]  # every slot answered
        for index, reply in enumerate(replies):
            if reply.status == TRANSFER_IN_PROGRESS:  # a hold's capture on its way to another shard
                replies[index] = await self._finish_capture(commands[index], reply)
        return replies

    # ---- money across shards -------------------------------------------------------------

    def _with_remote_destination(self, hold: c.PlaceHold, engine: ShardPort) -> c.PlaceHold:
        """A hold naming an account of another shard: what that shard has committed of it goes
        with the command (the rule decides; nothing is recorded for where the account lives)."""
        destination_id = hold.destination_account_id
        assert destination_id is not None
        other = self.port_for(destination_id)
        if other is None or other is engine:
            return hold
        state = other.account_state(destination_id)
        if state is None:
            return dataclasses.replace(hold, remote_destination=c.RemoteAccount(False))
        account = Account(*state[: len(ACCOUNT_FIELDS)])
        remote = c.RemoteAccount(True, account.currency, account.status, account.is_system)
        return dataclasses.replace(hold, remote_destination=remote)

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
            return second  # unavailable: still in flight; the client retries the same id, which finishes it
        target.expect_inbound(to_account_id, leg, False)
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


def _pending_transfer(row: tuple) -> c.Transfer:  # type: ignore[type-arg]
    """A ``transfers_pending`` row (``schema.TRANSFER_COLUMNS``) as the movement it continues."""
    account_id, op_id, to_account_id, amount, currency, description, metadata, _ = row
    return c.Transfer(op_id, account_id, to_account_id, int(amount), currency, description, bytes(metadata))


def _view_of(body: bytes) -> dict[str, object]:
    return msgspec.json.decode(body)  # type: ignore[no-any-return]
