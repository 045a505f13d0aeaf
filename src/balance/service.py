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
import secrets
from collections.abc import Sequence

import msgspec

from balance import views
from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.cross_shard import TRANSFER_IN_PROGRESS, transfer_target_refusal
from balance.domain.model import Account
from balance.engine.replies import Collector, Reply, Unavailable, unavailable_reply
from balance.engine.shard import ShardEngine
from balance.keys import KeyRecord, KeyRegistry, hash_key

ADMIN = a.ADMIN


@functools.lru_cache(maxsize=65536)
def shard_of(account_id: str) -> int | None:
    """The home shard encoded in an account id, or None if the id is not one of ours."""
    parts = account_id.split("-", 2)
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 9:
        return None  # not ASCII digits ("²" passes isdigit) or too long for int(): not one of ours
    return int(parts[1])


def new_account_id(region: str, shard: int) -> str:
    return f"{region}-{shard}-{secrets.token_hex(8)}"


def not_found(account_id: str) -> Reply:
    return Reply(404, views.problem(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found"))


class BalanceService:
    """Routes commands to shard engines and decides who may act on which account."""

    def __init__(self, engines: Sequence[ShardEngine], admin_key: str, *, admin_key_hash: str | None = None) -> None:
        self.engines = list(engines)
        # A key from the environment is compared as is (no hash per admin request); a generated
        # one is known by its hash only (kept in the data directory).
        self._admin_key = admin_key if admin_key_hash is None else None
        self._admin_hash = admin_key_hash or hash_key(admin_key)
        self.keys = KeyRegistry()
        self._keys_creating: dict[tuple[str, str], asyncio.Future[None]] = {}  # (account, client id) in flight
        # The loop the service runs in, taken once at start (get_running_loop() is a system call
        # per call in CPython 3.11); a service used without start() asks for it each time.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(engine.start() for engine in self.engines))
        for engine in self.engines:
            for row in await engine.storage.load_keys():
                self.keys.add(KeyRecord.from_row(row))
        await self.finish_pending_transfers()

    async def stop(self) -> None:
        await asyncio.gather(*(engine.stop() for engine in self.engines))

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self.engines)

    def engine_for(self, account_id: str) -> ShardEngine | None:
        shard = shard_of(account_id)
        if shard is None or shard >= len(self.engines):
            return None
        return self.engines[shard]

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
        engine = self.engine_for(record.account_id)
        account = None if engine is None else engine.ledger.accounts.get(record.account_id)
        power = a.key_power(record.scopes, None if account is None else account.status)
        if power is None:
            return None
        return record.actor if power == record.scopes else a.Actor(record.actor.principal, power, record.key_id)

    def principal(self, key: str | None) -> str | None:
        """ADMIN, the account id a key belongs to, or None (``actor`` says what it may do)."""
        actor = self.actor(key)
        return None if actor is None else actor.principal

    def chain(self, account_id: str) -> tuple[str, ...]:
        """``account_id`` and its ancestors (a child lives on its parent's shard)."""
        engine = self.engine_for(account_id)
        if engine is None:
            return (account_id,)
        return a.chain(engine.parent_of, account_id)

    def may_act_on(self, principal: str, account_id: str) -> bool:
        """Admin acts on everything; a partner key on its own account and its descendants."""
        if principal == ADMIN:
            return True
        engine = self.engine_for(account_id)
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
            engine = self.engine_for(cmd_without_id.parent_id)
            if engine is None:
                return not_found(cmd_without_id.parent_id)
        else:
            engine = min(self.engines, key=lambda eng: len(eng.ledger.accounts))
        account_id = new_account_id(cmd_without_id.region, engine.shard)
        return await engine.execute(dataclasses.replace(cmd_without_id, account_id=account_id))

    async def create_key(
        self, account_id: str, scopes: int = a.PARTNER_DEFAULT, client_id: str | None = None
    ) -> tuple[Reply, str | None]:
        """A new key (its secret shown in this answer only). With ``client_id``: the same id
        and scopes again answer the same key id, ``replayed``, without the secret."""
        engine = self.engine_for(account_id)
        if engine is None:
            return not_found(account_id), None
        if client_id is None:
            return await self._new_key(engine, account_id, scopes, None)
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
            return await self._new_key(engine, account_id, scopes, client_id)
        finally:
            del self._keys_creating[slot]
            done.set_result(None)

    async def _new_key(
        self, engine: ShardEngine, account_id: str, scopes: int, client_id: str | None
    ) -> tuple[Reply, str | None]:
        key = "bk_" + secrets.token_urlsafe(32)
        key_hash, key_id, created_at = hash_key(key), "key_" + secrets.token_hex(8), engine.clock()
        command = c.CreateKey(account_id, key_hash, key_id, key[:8], scopes, client_id, created_at)
        reply = await engine.execute(command)
        if reply.status != 201:
            return reply, None
        record = KeyRecord.from_row((key_hash, account_id, created_at, key_id, key[:8], scopes, None, client_id))
        self.keys.add(record)
        return Reply(201, views.encoder.encode(_key_answer(record, key, replayed=False))), key

    async def revoke_key(self, account_id: str, key_id: str) -> Reply:
        """The key stops working at once (in memory before the write: a failed write still
        leaves it refused here, and the client's retry stores it)."""
        record = self.keys.by_id.get(key_id)
        engine = self.engine_for(account_id)
        if record is None or record.account_id != account_id or engine is None:
            return Reply(404, views.problem(e.KEY_NOT_FOUND, 404, f"key {key_id} not found"))
        if record.revoked_at is None:
            record.revoked_at = engine.clock()
        reply = await engine.execute(c.RevokeKey(account_id, record.row()))
        if reply.status != 200:
            return reply
        return Reply(200, views.encoder.encode(record.view()))

    def list_keys(self, account_id: str) -> list[dict[str, object]]:
        return [record.view() for record in self.keys.of_account(account_id)]

    async def execute(self, command: c.Command) -> Reply:
        return (await self.run_many([command]))[0]

    async def run_many(self, commands: Sequence[c.Command]) -> list[Reply]:
        """Run commands in order (same-account order is kept: one shard, one queue), all
        answered through one collector (a batch request makes no future per operation)."""
        collector = Collector(len(commands), self._loop or asyncio.get_running_loop())
        across: list[tuple[int, asyncio.Task[Reply]]] = []
        for index, command in enumerate(commands):
            account_id = command.account_id
            engine = self.engine_for(account_id)
            if engine is None:
                collector.answer(index, not_found(account_id))
                continue
            if isinstance(command, c.Transfer) and self.engine_for(command.to_account_id) is not engine:
                across.append((index, asyncio.ensure_future(self._transfer_across_shards(command, engine))))
                continue
            try:
                engine.enqueue_into(command, collector, index)
            except Unavailable as exc:
                collector.answer(index, unavailable_reply(exc.detail))
        for index, task in across:
            collector.answer(index, await task)
        if commands:
            await collector.future
        return collector.replies  # type: ignore[return-value]  # every slot answered

    # ---- transfers across shards ---------------------------------------------------------

    async def _transfer_across_shards(self, transfer: c.Transfer, source: ShardEngine) -> Reply:
        """Source leg (debit into transit), target leg (credit from transit), then the answer.

        Each leg is its own durable, idempotent commit. A crash between them leaves a row in
        the source shard's ``transfers_pending``; ``start`` (and any retry of the same id)
        finishes it. Money in transit sits on the shards' transit accounts, so every shard's
        balances still sum to zero.
        """
        target = self.engine_for(transfer.to_account_id)
        if target is None:
            return not_found(transfer.to_account_id)
        state = target.account_state(transfer.to_account_id)
        refusal = transfer_target_refusal(None if state is None else Account(*state), transfer)
        if refusal is not None:
            return Reply(refusal.status, views.encode_rejection(refusal))
        first = await source.execute(c.TransferOut(transfer))
        if first.status != TRANSFER_IN_PROGRESS:
            return first  # refused, unavailable, or the finished transfer replayed
        return await self._finish_transfer(transfer, first.body, target, source, replayed=first.replayed)

    async def _finish_transfer(
        self, transfer: c.Transfer, started_body: bytes, target: ShardEngine, source: ShardEngine, replayed: bool
    ) -> Reply:
        second = await target.execute(c.TransferIn(transfer))
        if second.status != 201:
            return second  # unavailable: the client retries the same id, which finishes it
        started = _view_of(started_body)
        final = views.encoder.encode(
            {"transaction": started["transaction"], "accounts": [started["account"], _view_of(second.body)["account"]]}
        )
        done = await source.execute(c.CompleteTransfer(transfer.from_account_id, transfer.op_id, final))
        if done.status != 200:
            return done
        return Reply(201, final, replayed)

    async def finish_pending_transfers(self) -> int:
        """Recovery: complete every cross-shard transfer whose second leg was not confirmed."""
        finished = 0
        for source in self.engines:
            for row in await source.storage.pending_transfers():
                account_id, op_id, to_account_id, amount, currency, description, metadata, _ = row
                transfer = c.Transfer(op_id, account_id, to_account_id, amount, currency, description, bytes(metadata))
                target = self.engine_for(to_account_id)
                if target is None:
                    raise RuntimeError(f"pending transfer {op_id} to an unknown shard")
                first = await source.execute(c.TransferOut(transfer))
                if first.status == TRANSFER_IN_PROGRESS:
                    reply = await self._finish_transfer(transfer, first.body, target, source, replayed=True)
                    finished += reply.status == 201
        return finished

    def account_state(self, account_id: str) -> tuple | None:  # type: ignore[type-arg]
        engine = self.engine_for(account_id)
        return None if engine is None else engine.account_state(account_id)


def _key_answer(record: KeyRecord, key: str | None, *, replayed: bool) -> dict[str, object]:
    return {**record.view(), "key": key, "replayed": replayed}


def _view_of(body: bytes) -> dict[str, object]:
    return msgspec.json.decode(body)  # type: ignore[no-any-return]
