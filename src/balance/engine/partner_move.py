"""A partner move between two shard engines, step by step, so that a crash anywhere is
finished (or rolled back) by running it again.

Steps (``MoveRecord.step``): ``freezing`` (freeze and export, in memory) → ``exported``
(``MoveOut`` on the source, which writes the move's record, export included, into the source
shard's database in the same commit: ``domain.move_records``) → ``moved_out`` (``MoveIn`` on
the target, in parts of ``ARRIVAL_ACCOUNTS`` accounts after the root's, so that the target's
other traffic goes between them; a definite refusal of the root's part brings the subtree back
onto the source) → ``moved_in``
(the caller's ``switch`` routes the subtree to the target) → ``done`` (written into the
record); or ``rolled_back``. Before ``MoveOut`` commits nothing is durable: a crash thaws the
subtree (rolled back). Once it has, whoever recovers the source shard finds the record
(``ShardStorage.unfinished_moves``) and runs it on to ``done``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import zlib
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
from balance.storage.base import StorageError

FREEZING, EXPORTED, MOVED_OUT, MOVED_IN, DONE, ROLLED_BACK = (
    "freezing", "exported", "moved_out", "moved_in", "done", "rolled_back",
)  # fmt: skip
ACCOUNT_METADATA = ACCOUNT_FIELDS.index("metadata")
BLOCKED_WAIT_S = 10.0  # how long money in flight may keep a frozen subtree from leaving
PART_BYTES = 256 * 1024  # the compressed export in rows of at most this (far below any packet limit)
ARRIVAL_ACCOUNTS = 1_000  # accounts per part of an arrival (one commit each, with their holds and first answers)
PART_PAUSE = 1.0  # after each part of an arrival, a pause of this many times the part's time
RECORD_TRIES = 100  # a step written into the record: tries (50 ms apart) before the caller is told


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
    parts: int = 0  # rows of the export in the source's record (``rows``)
    arrived: int = 0  # parts of the arrival the target has taken (in memory: each is idempotent)

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

    def rows(self, with_export: bool) -> tuple[tuple[Any, ...], ...]:
        """The record as the source shard stores it (``move_records.MOVE_RECORD_FIELDS``): part 0
        the step; with the export, its compressed parts after (else those parts emptied)."""

        def row(part: int, data: bytes) -> tuple[Any, ...]:
            return (
                self.move_id, part, self.root_id, self.from_shard, self.to_shard, self.step, self.source_seq,
                self.error[:500], 0, data,
            )  # fmt: skip

        if with_export:
            data = zlib.compress(self.encode_export(), 1)
            chunks = [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
            self.parts = len(chunks)
        else:
            chunks = [b""] * self.parts
        return (row(0, b""), *(row(i + 1, chunk) for i, chunk in enumerate(chunks)))

    @classmethod
    def from_stored(cls, head: tuple[Any, ...], data: bytes) -> MoveRecord:
        """A record read back from the source shard (``ShardStorage.unfinished_moves``)."""
        move_id, _, root_id, from_shard, to_shard, step, source_seq, error = head[:8]
        meta = {
            "move_id": str(move_id), "root_id": str(root_id), "from_shard": int(from_shard),
            "to_shard": int(to_shard), "step": str(step), "error": str(error), "source_seq": int(source_seq),
        }  # fmt: skip
        record = cls.decode(msgspec.json.encode(meta), zlib.decompress(data) if data else None)
        record.parts = -(-len(data) // PART_BYTES)
        return record

    @classmethod
    def load(cls, path: Path) -> MoveRecord:
        """A record an earlier version kept in the data directory (read once at start, resumed, removed)."""
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
    part_accounts: int = ARRIVAL_ACCOUNTS,
) -> MoveRecord:
    """Run ``record`` from its step to ``done`` or ``rolled_back``; ``save`` after each step.
    ``target``: the target's engine, or what sends it a command (on another node of a fleet)."""
    arrive_at = target.execute if isinstance(target, ShardEngine) else target
    if record.step in (FREEZING, EXPORTED):
        await _leave(source, record, save, blocked_wait_s)
    if record.step == MOVED_OUT:
        # In parts, each a commit of its own (the other partners' commits go between them);
        # all sent again after a crash: each part is idempotent (a replay answers 200).
        parts = await asyncio.to_thread(_parts, record, "in", part_accounts)
        record.arrived = 0
        while record.arrived < len(parts):
            sent = time.monotonic()
            reply = await arrive_at(parts[record.arrived])
            if reply.status == 200:
                record.arrived += 1
                if record.arrived < len(parts):
                    save(record)  # (between parts: nothing to write, the target's journal has them)
                    # A pause as long as the part took: its commit's thread holds the GIL most of
                    # the time, and the event loop (every other partner's requests) waits for it.
                    await asyncio.sleep((time.monotonic() - sent) * PART_PAUSE)
                continue
            if reply.status == 503 or record.arrived > 0:  # away (or a later part: never refused): forward only
                if reply.status != 503:
                    record.error = f"part {record.arrived} refused, tried again: {reply.body.decode(errors='replace')}"
                await asyncio.sleep(0.05)
                continue
            record.error = f"the target refused the subtree: {reply.body.decode(errors='replace')}"
            for back in await asyncio.to_thread(_parts, record, "back", part_accounts):
                while (await source.execute(back)).status != 200:
                    await asyncio.sleep(0.05)
            record.step = ROLLED_BACK
            await _record(source, record)
            break
        if record.step == MOVED_OUT:
            record.step, record.error = MOVED_IN, ""
        save(record)
    if record.step == MOVED_IN:
        if switch is not None:
            await switch([state[0] for state in record.accounts], record.to_shard)
        record.step = DONE
        await _record(source, record)
        save(record)
    return record


async def _record(source: ShardEngine, record: MoveRecord) -> None:
    """The move's last step into its record on the source shard (its export emptied). Lost
    (a crash, the shard taken over), the step before it is run again: each is idempotent."""
    command = c.RecordMove(record.move_id, record.root_id, record.rows(with_export=False))
    for _ in range(RECORD_TRIES):
        reply = await source.execute(command)
        if reply.status == 200:
            return
        await asyncio.sleep(0.05)
    raise StorageError(f"move {record.move_id}: its step {record.step} was not recorded on shard {record.from_shard}")


async def _leave(source: ShardEngine, record: MoveRecord, save: Callable[[MoveRecord], None], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    rows: tuple[tuple[Any, ...], ...] = ()  # the record the move out writes (made once per export)
    while True:
        if record.step == FREEZING:
            rows = ()
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
            ids, stored = [state[0] for state in accounts], []
            for start in range(0, len(ids), ARRIVAL_ACCOUNTS):  # in pages, paused as the arrival's parts
                began = time.monotonic()
                stored += await source.storage.move_records(ids[start : start + ARRIVAL_ACCOUNTS])
                if start + ARRIVAL_ACCOUNTS < len(ids):
                    await asyncio.sleep((time.monotonic() - began) * PART_PAUSE)
            record.records = await asyncio.to_thread(_first_answers, stored)
            record.step = EXPORTED
            save(record)  # (in memory only: a crash from here on thaws the subtree, nothing left)
        versions = tuple((state[0], int(state[11])) for state in record.accounts)
        if not rows:
            record.step = MOVED_OUT  # as the record written with the move out says (its seq filled in there)
            rows = await asyncio.to_thread(record.rows, True)  # (off the event loop: zlib lets it go)
            record.step = EXPORTED
        reply = await source.execute(c.MoveOut(record.move_id, record.root_id, record.to_shard, versions, rows))
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


def _first_answers(stored: list[Any]) -> list[list[Any]]:
    return [[row[0], row[1], int(row[2]), int(row[3]), bytes(row[4])] for row in stored]


def _parts(record: MoveRecord, tag: str, size: int) -> list[c.MoveIn]:
    """The arrival (``tag`` "in") or the way back ("back") in parts of ``size`` accounts
    (parents first, as exported) with their holds and first answers."""
    accounts, holds, records = _snapshot(record)
    size = max(1, size)
    rest = accounts[1:]  # part 0: the root alone (idempotent by its key; the later parts by what arrived)
    groups = [accounts[:1], *(rest[i : i + size] for i in range(0, len(rest), size))]
    part_of = {state[0]: n for n, group in enumerate(groups) for state in group}
    part_holds: list[list[tuple[Any, ...]]] = [[] for _ in groups]
    part_records: list[list[tuple[Any, ...]]] = [[] for _ in groups]
    for hold in holds:
        part_holds[part_of.get(hold[0], 0)].append(hold)
    for row in records:
        part_records[part_of.get(row[0], 0)].append(row)
    later = tuple(state[0] for group in groups[1:] for state in group)
    back = tag == "back"
    return [
        c.MoveIn(
            record.move_id, record.root_id, group, tuple(part_holds[n]), tuple(part_records[n]),
            tag, -1 if back else record.from_shard, 0 if back else record.source_seq, n, later if n == 0 else (),
        )
        for n, group in enumerate(groups)
    ]  # fmt: skip


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
    return msgspec.json.encode({
        "tag": command.tag, "record": record.encode().decode(), "export": record.encode_export().decode(),
        "part": command.part, "later": list(command.later),
    })  # fmt: skip


def move_in_from_wire(body: bytes) -> c.MoveIn:
    """The other side of ``move_in_wire`` (raises ValueError for anything else)."""
    try:
        wire = msgspec.json.decode(body, type=dict[str, Any])
        record = MoveRecord.decode(wire["record"].encode(), wire["export"].encode())
        tag = str(wire["tag"])
        part, later = int(wire.get("part", 0)), tuple(str(account_id) for account_id in wire.get("later", ()))
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a move: {exc}") from None
    accounts, holds, records = _snapshot(record)
    return c.MoveIn(
        record.move_id, record.root_id, accounts, holds, records, tag, record.from_shard, record.source_seq, part, later
    )
