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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from balance.domain import commands as c
from balance.domain import moves
from balance.engine.replies import Reply
from balance.engine.shard import ShardEngine

FREEZING, EXPORTED, MOVED_OUT, MOVED_IN, DONE, ROLLED_BACK = (
    "freezing", "exported", "moved_out", "moved_in", "done", "rolled_back",
)  # fmt: skip
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

    def encode(self) -> bytes:
        return json.dumps(asdict(self), default=_bytes_out).encode()

    @classmethod
    def decode(cls, data: bytes) -> MoveRecord:
        return cls(**json.loads(data, object_hook=_bytes_in))

    def save(self, path: Path) -> None:
        """Durably: written beside, flushed, renamed over."""
        part = path.with_suffix(".part")
        with part.open("wb") as out:
            out.write(self.encode())
            out.flush()
            os.fsync(out.fileno())
        part.replace(path)


def _bytes_out(value: object) -> object:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    raise TypeError(type(value).__name__)


def _bytes_in(obj: dict[str, Any]) -> object:
    return base64.b64decode(obj["$b"]) if obj.keys() == {"$b"} else obj


def _code(reply: Reply) -> str:
    try:
        return str(json.loads(reply.body).get("code", "")) if reply.body else ""
    except ValueError:
        return ""


async def run_move(
    source: ShardEngine,
    target: ShardEngine,
    record: MoveRecord,
    save: Callable[[MoveRecord], None],
    switch: Callable[[list[str], int], None] | None = None,
    blocked_wait_s: float = BLOCKED_WAIT_S,
) -> MoveRecord:
    """Run ``record`` from its step to ``done`` or ``rolled_back``; ``save`` after each step."""
    if record.step in (FREEZING, EXPORTED):
        await _leave(source, record, save, blocked_wait_s)
    if record.step == MOVED_OUT:
        arrive = c.MoveIn(record.move_id, record.root_id, *_snapshot(record))
        while True:
            reply = await target.execute(arrive)
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
            switch([state[0] for state in record.accounts], record.to_shard)
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
            record.step = MOVED_OUT
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
