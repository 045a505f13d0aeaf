"""A partner move between two shard engines of this process, step by step from a durable
record, so that a crash anywhere is finished (or rolled back) by running it again.

Steps (``MoveRecord.step``): ``freezing`` (freeze, export, and the export saved before
anything leaves) → ``exported`` (``MoveOut`` on the source) → ``moved_out`` (``MoveIn`` on
the target; a definite refusal there brings the subtree back onto the source) → ``moved_in``
(the caller's ``switch`` routes the subtree to the target) → ``done``; or ``rolled_back``.
Before ``MoveOut`` commits a move can only roll back; once it has, it only goes forward.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from balance.domain import commands as c
from balance.domain import moves
from balance.domain.model import ACCOUNT_FIELDS, HOLD_METADATA
from balance.engine.replies import Reply
from balance.engine.shard import ShardEngine

FREEZING, EXPORTED, MOVED_OUT, MOVED_IN, DONE, ROLLED_BACK = (
    "freezing", "exported", "moved_out", "moved_in", "done", "rolled_back",
)  # fmt: skip
ACCOUNT_METADATA = ACCOUNT_FIELDS.index("metadata")
BLOCKED_WAIT_S = 10.0  # how long money in flight may keep a frozen subtree from leaving


@dataclass
class MoveRecord:
    move_id: str
    root_id: str
    from_shard: int
    to_shard: int
    step: str = FREEZING
    accounts: list[list[Any]] = field(default_factory=list)
    holds: list[list[Any]] = field(default_factory=list)
    records: list[list[Any]] = field(default_factory=list)
    error: str = ""
    source_seq: int = 0  # the seq of the MoveOut on the source (the events' barrier)

    def encode(self) -> bytes:
        """The step (small; written at every step)."""
        return msgspec.json.encode({
            "move_id": self.move_id, "root_id": self.root_id, "from_shard": self.from_shard,
            "to_shard": self.to_shard, "step": self.step, "error": self.error, "source_seq": self.source_seq,
        })  # fmt: skip

    def encode_export(self) -> bytes:
        """The export (written once, before anything leaves): bytes fields as base64."""
        return msgspec.json.encode([self.accounts, self.holds, self.records])

    @classmethod
    def decode(cls, data: bytes, export: bytes | None = None) -> MoveRecord:
        record = cls(**msgspec.json.decode(data))
        if export is not None:
            accounts, holds, records = msgspec.json.decode(export)
            for state in accounts:
                state[ACCOUNT_METADATA] = base64.b64decode(state[ACCOUNT_METADATA])
            for state in holds:
                state[HOLD_METADATA] = base64.b64decode(state[HOLD_METADATA])
            for row in records:
                row[4] = base64.b64decode(row[4])
            record.accounts, record.holds, record.records = accounts, holds, records
        return record

    @classmethod
    def load(cls, path: Path) -> MoveRecord:
        export = path.with_suffix(".export")
        return cls.decode(path.read_bytes(), export.read_bytes() if export.exists() else None)

    def save(self, path: Path) -> None:
        """Durably (written beside, flushed, renamed over); the export with the step that made it."""
        if self.step == EXPORTED:
            _write(path.with_suffix(".export"), self.encode_export())
        _write(path, self.encode())

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".export").unlink(missing_ok=True)


def _write(path: Path, data: bytes) -> None:
    part = path.with_suffix(path.suffix + ".part")
    with part.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    part.replace(path)


def _code(reply: Reply) -> str:
    try:
        return str(json.loads(reply.body).get("code", "")) if reply.body else ""
    except ValueError:
        return ""


async def run_move(
    source: ShardEngine,
    target: ShardEngine | Callable[[c.MoveIn], Awaitable[Reply]],
    record: MoveRecord,
    save: Callable[[MoveRecord], None],
    switch: Callable[[list[str], int], Awaitable[None]] | None = None,
    blocked_wait_s: float = BLOCKED_WAIT_S,
) -> MoveRecord:
    """Run ``record`` from its step to ``done`` or ``rolled_back``; ``save`` after each step.
    ``target``: the target's engine, or what sends it a command (on another node of a fleet)."""
    arrive_at = target.execute if isinstance(target, ShardEngine) else target
    if record.step in (FREEZING, EXPORTED):
        await _leave(source, record, save, blocked_wait_s)
    if record.step == MOVED_OUT:
        arrive = c.MoveIn(
            record.move_id, record.root_id, *_snapshot(record), from_shard=record.from_shard,
            source_seq=record.source_seq,
        )  # fmt: skip
        while True:
            reply = await arrive_at(arrive)
            if reply.status == 200:
                record.step = MOVED_IN
                break
            if reply.status == 503:  # the target is away: forward only, so wait for it
                await asyncio.sleep(0.05)
                continue
            record.error = f"the target refused the subtree: {reply.body.decode(errors='replace')}"
            back = c.MoveIn(record.move_id, record.root_id, *_snapshot(record), tag="back")
            while (await source.execute(back)).status != 200:
                await asyncio.sleep(0.05)
            record.step = ROLLED_BACK
            break
        save(record)
    if record.step == MOVED_IN:
        if switch is not None:
            await switch([state[0] for state in record.accounts], record.to_shard)
        record.step = DONE
        save(record)
    return record


async def _leave(source: ShardEngine, record: MoveRecord, save: Callable[[MoveRecord], None], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        if record.step == FREEZING:
            freeze = await source.execute(c.FreezeMove(record.move_id, record.root_id))
            if freeze.status == 503 and _code(freeze) not in ("account_moved",):
                await asyncio.sleep(0.05)
                continue
            if freeze.status != 200:
                record.step, record.error = ROLLED_BACK, f"refused: {freeze.body.decode(errors='replace')}"
                save(record)
                return
            exported = moves.export(source.ledger, record.move_id, record.root_id)
            if exported is None:
                continue
            accounts, holds = exported
            record.accounts = [list(state) for state in accounts]
            record.holds = [list(state) for state in holds]
            # Every first answer is in storage: the freeze's reply came after every earlier commit.
            stored = await source.storage.move_records([state[0] for state in accounts])
            record.records = [[row[0], row[1], int(row[2]), int(row[3]), bytes(row[4])] for row in stored]
            record.step = EXPORTED
            save(record)  # before anything leaves: a crash from here on knows what left
        versions = tuple((state[0], int(state[11])) for state in record.accounts)
        reply = await source.execute(c.MoveOut(record.move_id, record.root_id, record.to_shard, versions))
        if reply.status == 200:
            record.step, record.source_seq = MOVED_OUT, int(json.loads(reply.body or b"{}").get("seq", 0))
            save(record)
            return
        code = _code(reply)
        if code == moves.MOVE_STALE:  # thawed by a restart, or changed: export again
            record.step = FREEZING
            continue
        if (code == moves.MOVE_BLOCKED or reply.status == 503) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            continue
        await source.execute(c.ThawMove(record.move_id, record.root_id))
        record.step, record.error = ROLLED_BACK, f"not moved: {reply.body.decode(errors='replace')}"
        save(record)
        return


def _snapshot(record: MoveRecord) -> tuple[tuple[tuple[Any, ...], ...], tuple[tuple[Any, ...], ...], tuple[Any, ...]]:
    return (
        tuple(tuple(state) for state in record.accounts),
        tuple(tuple(state) for state in record.holds),
        tuple((r[0], r[1], int(r[2]), int(r[3]), r[4]) for r in record.records),
    )


def move_in_wire(command: c.MoveIn) -> bytes:
    """A ``MoveIn`` as the internal route between nodes carries it (bytes as base64)."""
    record = MoveRecord(command.move_id, command.root_id, command.from_shard, -1, source_seq=command.source_seq)
    record.accounts = [list(state) for state in command.accounts]
    record.holds = [list(state) for state in command.holds]
    record.records = [list(row) for row in command.records]
    return msgspec.json.encode(
        {"tag": command.tag, "record": record.encode().decode(), "export": record.encode_export().decode()}
    )


def move_in_from_wire(body: bytes) -> c.MoveIn:
    """The other side of ``move_in_wire`` (raises ValueError for anything else)."""
    try:
        wire = msgspec.json.decode(body, type=dict[str, Any])
        record = MoveRecord.decode(wire["record"].encode(), wire["export"].encode())
        tag = str(wire["tag"])
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a move: {exc}") from None
    accounts, holds, records = _snapshot(record)
    return c.MoveIn(record.move_id, record.root_id, accounts, holds, records, tag, record.from_shard, record.source_seq)
