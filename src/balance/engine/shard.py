"""The single writer of one shard: group commit over an in-memory ledger.

Requests from many callers wait in one queue. The writer takes everything queued (up to
``batch_max``), reads what the batch needs from storage (rarely anything), applies it to the
ledger in memory, and writes all its rows in ONE transaction. Callers are answered only
after that commit. If the commit fails, the ledger is rolled back to exactly where it was
and every caller of the batch gets ``unavailable`` (safe to retry with the same id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from balance.domain import commands as c
from balance.domain import limits
from balance.domain.ledger import Ledger
from balance.engine import lookups
from balance.engine.clock import Clock, system_clock
from balance.engine.expiry_sweep import sweep_loop
from balance.engine.recovery import Backoff, load_ledger
from balance.engine.replies import Collector, Reply, Slot, Unavailable, render, unavailable_reply
from balance.events.outbox import outbox_row
from balance.metrics import Metrics
from balance.storage.base import (
    EARLIER_FAILED,
    BatchWrite,
    DuplicateOperation,
    Fenced,
    ShardStorage,
    StorageError,
    succeeded,
)

log = logging.getLogger("balance.engine")

# What a shard is doing (``/readyz`` shows it per shard): starting (not started yet), recovering
# (loading from storage), retrying (storage failed; waiting before the next attempt), ready,
# resyncing (after a failed commit: asking storage whether it landed), stopped, failed (a bug or
# a broken invariant: it stays so).
STARTING, RECOVERING, RETRYING, READY, RESYNCING = "starting", "recovering", "retrying", "ready", "resyncing"
STOPPED, FAILED = "stopped", "failed"
FENCED = "fenced"  # another node owns the shard now: this engine serves and writes nothing more
QUEUE_MAX = 200_000  # beyond this, shed load at once instead of queueing without bound
CHECKPOINT_INTERVAL_S = 2.0  # the holds table is brought up to date with a batch this often
CHECKPOINT_ROWS = 100_000  # ... or after this many journal rows, whichever comes first
# A checkpoint is written a slice per batch, never whole in one commit (that stalled every
# answer behind it: p99 of 100-600 ms with holds left pending). The slices are paced over
# ``CHECKPOINT_SPREAD_S``: each batch writes the round's rows due by then (the round's size
# times the share of the spread gone), and at least this many plus one per command of the
# batch, so a round ends even under full load and recovery's replay stays bounded (about two
# checkpoint intervals of journal). Unpaced slices (256 rows with every batch) wrote a round
# as fast as the writer could: on SQLite a run of commits several times their own size, and
# the small-batch merge lost while it lasted (p99 55 -> 790 ms at 90% of the hot rate). Spread
# over the whole interval, the rounds follow one another: a steady share of the writer.
CHECKPOINT_SLICE_ROWS = 16
CHECKPOINT_SPREAD_S = CHECKPOINT_INTERVAL_S  # in process, 3,000 holds/s on 10,000 accounts: p99 37-65 ms; 1 s: 127-390
SPLIT_MIN = 512  # commands: a queue of twice this, met by an idle writer, goes in two batches


@dataclass(slots=True)
class _Batch:
    """A batch on its way: applied in memory, its rows written by ``commit``, callers waiting."""

    items: list[tuple[c.Command, asyncio.Future[Reply]]]
    replies: list[Reply]
    counts: dict[tuple[str, str], int]
    write: BatchWrite
    first_seq: int
    op_keys: list[tuple[str, str]]
    remote_holds: list[tuple[str, str, str, bool]]
    commit: asyncio.Future[None] | None = None
    started: float = 0.0
    applied_s: float = 0.0  # the writer's time applying it and building its rows
    expiries: int = 0  # expiries among its commands (the sweep's: their cost paces the sweep)


async def _follow(after: asyncio.Future[None] | None) -> None:
    """The commit of a batch with nothing to write: done when the batch before it is."""
    if not await succeeded(after):
        raise StorageError(EARLIER_FAILED)


_KIND_NAMES = {
    c.Credit: "credit", c.Debit: "debit", c.Transfer: "transfer", c.PlaceHold: "hold",
    c.CaptureHold: "capture", c.ReleaseHold: "release", c.ExpireHold: "expire",
    c.CreateAccount: "create_account", c.UpdateAccount: "update_account", c.CreateKey: "create_key",
    c.TransferOut: "transfer_out", c.TransferIn: "transfer_in", c.CompleteTransfer: "transfer_complete",
    c.ReturnTransfer: "transfer_return", c.ResumeLeg: "transfer_resume", c.RecordResultConflict: "result_conflict",
}  # fmt: skip


class ShardEngine:
    """Owns one shard's ledger; the only code that writes to its storage."""

    def __init__(
        self,
        shard: int,
        storage: ShardStorage,
        *,
        clock: Clock = system_clock,
        metrics: Metrics | None = None,
        batch_max: int = limits.ENGINE_BATCH_MAX,
        sweep_interval_s: float = 1.0,
        on_fatal: Callable[[BaseException], None] | None = None,
        records_max: int = limits.IDEMPOTENCY_CACHE_ENTRIES,
        finished_holds_max: int = limits.FINISHED_HOLDS_CACHE_ENTRIES,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        backoff: Backoff | None = None,
    ) -> None:
        self.shard = shard
        self.storage = storage
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.batch_max = batch_max
        self.split_min = SPLIT_MIN
        self.checkpoint_interval_s = checkpoint_interval_s
        self.checkpoint_slice_rows = CHECKPOINT_SLICE_ROWS
        self.checkpoint_spread_s = CHECKPOINT_SPREAD_S
        self._round_rows = 0  # rows of the checkpoint round in progress when it began
        self._checkpointed_at = time.monotonic()
        self.checkpoint_from = 0
        self.sweep_interval_s = sweep_interval_s
        # Job mode (``balance.expiry``): the sweep only takes holds overdue by more than this.
        self.expiry_fallback_s = 0.0
        self.ledger_limits = {"records_max": records_max, "finished_holds_max": finished_holds_max}
        self.ledger = Ledger(shard, **self.ledger_limits)
        # A fleet node's shard: closes wait until every node has told which of its holds name
        # accounts here (``node.remote_marks``); set on each ledger loaded at start.
        self.remote_marks_start_unknown = False
        self.state = STARTING
        self.backoff = backoff or Backoff()
        self.attempts = 0  # failed attempts to reach storage since the shard last served
        self.last_error: str | None = None  # the last storage error (kept after recovery, for operators)
        self.retry_at = 0.0  # time.monotonic() of the next attempt, while retrying
        # The loop the engine runs in, taken once at start: CPython 3.11's get_running_loop()
        # makes a getpid() system call on every call (~8% of a single-op server's busy time).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recovery_s = 0.0
        self._on_fatal = on_fatal
        self._queue: list[tuple[c.Command, asyncio.Future[Reply]]] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.label = str(shard)
        self._counts: dict[tuple[str, str], int] = {}  # (kind, outcome) -> count, per batch
        self._requeued = 0  # commands put back at the head of the queue by the last _settle
        # The writer's time spent on expiries: each batch's (apply or commit, whichever took
        # longer: the writer overlaps one batch's commit with the next one's apply), in
        # proportion to the expiries among its commands. The sweep paces itself by it.
        self.expiry_busy_s = 0.0
        self._commit_end = 0.0  # when the last commit ended (a commit's own time starts after it)
        self._m_batch = self.metrics.batch_commands.labels(self.label)
        self._m_commit = self.metrics.commit_seconds.labels(self.label)
        self._m_busy = self.metrics.commit_busy.labels(self.label)
        self._m_queue = self.metrics.queue_depth.labels(self.label)
        self._m_checkpoints = self.metrics.holds_checkpoints.labels(self.label)
        self._m_unsaved = self.metrics.holds_unsaved.labels(self.label)
        self._m_unsaved_accounts = self.metrics.accounts_unsaved.labels(self.label)
        # What other shards must learn of this one's commits, told as each commit lands (the
        # service wires these; ``ledger.Ledger.inbound``): cross-shard legs started (rows of
        # ``transfers_started``) and holds naming an account of another shard placed or settled.
        self.on_commit: Callable[[list[tuple], list[tuple[str, str, str, bool]]], None] | None = None  # type: ignore[type-arg]
        # The ledger was loaded again after a failed commit that had landed: its pending holds
        # naming other shards are in ``ledger.remote_holds_loaded``.
        self.on_reload: Callable[[ShardEngine], None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Recover (load, rebuild reserved, check invariants), then serve. Storage that fails
        (down, unreachable) is retried with backoff until it answers; anything else (a bug, a
        broken invariant) leaves the shard ``failed`` and is raised."""
        self._loop = asyncio.get_running_loop()
        self.metrics.ready.labels(self.label).set(0)
        started = time.perf_counter()
        while True:
            self.state = RECOVERING
            try:
                await self.storage.open()
                self.ledger = await load_ledger(self)
                self.ledger.remote_marks_unknown = self.remote_marks_start_unknown
                break
            except Fenced as exc:  # a newer owner has the shard: not ours to serve
                self._fenced(exc)
                await self.storage.close()
                return
            except StorageError as exc:
                try:
                    await self.storage.close()  # the next attempt opens afresh
                except Exception as close_exc:  # noqa: BLE001 (closing what failed may fail too)
                    log.debug("shard %s: close after a failed attempt: %r", self.shard, close_exc)
                await self._wait_to_retry("recovery", exc)
                if self.state == STOPPED:  # stop() came while waiting
                    return
            except Exception as exc:
                self.state, self.last_error = FAILED, f"{type(exc).__name__}: {exc}"
                raise
        if self.attempts:
            log.warning("shard %s: storage answers again after %d failed attempts", self.shard, self.attempts)
        self.attempts = 0
        self.recovery_s = time.perf_counter() - started
        self.metrics.recovery_seconds.labels(self.label).set(self.recovery_s)
        self._tasks = [asyncio.create_task(self._write_loop()), asyncio.create_task(sweep_loop(self))]
        self.state = READY
        self.metrics.ready.labels(self.label).set(1)
        log.info("shard %s ready: %d accounts, %d holds, %.2fs",
                 self.shard, len(self.ledger.accounts), len(self.ledger.holds), self.recovery_s)  # fmt: skip

    async def stop(self, checkpoint: bool = True) -> None:
        """Finish what is queued, write a last checkpoint, then close storage.

        ``checkpoint=False`` leaves the tables as a crash would (tests of recovery)."""
        drained = False
        if self.state == READY:
            for _ in range(2000):  # drain what is queued and in flight (bounded: 10 s)
                if not self._queue and not self.ledger.batches_in_flight:
                    drained = True
                    break
                await asyncio.sleep(0.005)
        self.state = STOPPED  # from here on nothing new is taken: no batch can start
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: PERF203
                pass
        self._tasks = []
        for _, future in self._queue:
            if not future.done():
                future.set_result(unavailable_reply("the shard is stopping"))
        self._queue.clear()
        if drained and checkpoint:
            await self._last_checkpoint()
        await self.storage.close()

    async def _last_checkpoint(self) -> None:
        """A clean stop leaves the tables complete, so the next start replays no journal.
        If it fails nothing is lost: the journal has everything, and the next start replays it."""
        ledger = self.ledger
        for _ in range(2):  # the round in progress, if any, then one of everything since
            if (
                not (ledger.unsaved_holds or ledger.unsaved_accounts or ledger.checkpointing)
                or ledger.batches_in_flight
            ):
                return
            batch = self._prepare([], checkpoint=True)
            try:
                await self.storage.commit(batch.write, None)
            except Exception as exc:
                ledger.rollback()
                log.warning("shard %s: the last checkpoint was not written (%s); the next start replays the journal",
                            self.shard, exc)  # fmt: skip
                return
            ledger.accept()

    @property
    def ready(self) -> bool:
        return self.state == READY

    # ---- commands ------------------------------------------------------------------------

    def enqueue(self, command: c.Command) -> asyncio.Future[Reply]:
        """Queue one command; the future resolves after its batch is committed (or undone)."""
        self._admit()
        loop = self._loop
        assert loop is not None  # _admit: the engine is ready, so it started
        future: asyncio.Future[Reply] = loop.create_future()
        self._queue.append((command, future))
        self._wakeup.set()
        return future

    def enqueue_into(self, command: c.Command, collector: Collector, index: int) -> None:
        """Queue one command whose reply goes to ``collector.replies[index]``."""
        self._admit()
        self._queue.append((command, Slot(collector, index)))  # type: ignore[arg-type]
        self._wakeup.set()

    def _admit(self) -> None:
        if self.state != READY:
            raise Unavailable(f"shard {self.shard} is {self.state}")
        if len(self._queue) >= QUEUE_MAX:
            raise Unavailable(f"shard {self.shard} is overloaded")

    async def execute(self, command: c.Command) -> Reply:
        try:
            return await self.enqueue(command)
        except Unavailable as exc:
            return unavailable_reply(exc.detail)

    # ---- reads (committed state only) ----------------------------------------------------

    def account_state(self, account_id: str) -> tuple | None:  # type: ignore[type-arg]
        return self.ledger.committed_account(account_id)

    def parent_of(self, account_id: str) -> str | None:
        account = self.ledger.accounts.get(account_id)
        return None if account is None else account.parent_id

    def account_status(self, account_id: str) -> str | None:
        account = self.ledger.accounts.get(account_id)
        return None if account is None else account.status

    async def hold_state(self, account_id: str, hold_id: str) -> tuple | None:  # type: ignore[type-arg]
        if self.ledger.knows_hold(account_id, hold_id):
            return self.ledger.committed_hold(account_id, hold_id)
        return await self.storage.get_hold(account_id, hold_id)

    # ---- the writer ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Take, prefetch, apply, commit. Batch N+1 is applied and its commit started while N
        commits (the storage makes N+1 take effect only if N does): two batches in flight, or
        more where the storage asks for them (``in_flight_max``: SQLite merges those waiting)."""
        inflight: list[_Batch] = []  # oldest first; each one's commit started after the one before
        items: list[tuple[c.Command, asyncio.Future[Reply]]] = []
        try:
            while True:
                items = []
                if inflight and len(inflight) >= self.storage.in_flight_max(inflight[-1].write):
                    await self._settle(inflight)  # full: wait for the oldest
                    continue
                if not await self._settle_finished(inflight):
                    continue
                if not self._queue or self.state != READY:
                    self._wakeup.clear()  # set again by enqueue() and by the end of a commit
                    await self._wakeup.wait()
                    continue
                items = self._take(not inflight)
                try:
                    await lookups.prefetch(self, [command for command, _ in items])
                except StorageError as exc:
                    self._answer_unavailable(items, f"storage is failing ({exc}); retry with the same id")
                    continue
                if not await self._settle_finished(inflight):  # one ended during the prefetch, and failed
                    if self._requeued:  # undone batches go first, then these, in order
                        self._queue[self._requeued : self._requeued] = items
                    else:
                        self._answer_unavailable(items, "storage is failing; retry with the same id")
                    continue
                batch = self._prepare(items)
                self._start_commit(batch, inflight[-1].commit if inflight else None)
                inflight.append(batch)
                items = []
        except BaseException as exc:
            pending = items + [item for batch in inflight for item in batch.items]
            if self.ledger.batches_in_flight:
                self.ledger.rollback()
            self._fail(exc, pending)
            raise

    def _take(self, idle: bool) -> list[tuple[c.Command, asyncio.Future[Reply]]]:
        """Up to ``batch_max`` commands; when nothing is committing, at most half of a long
        queue, so that the other half is applied and written while this half commits."""
        size = self.batch_max
        if idle and self.split_min and len(self._queue) >= 2 * self.split_min:
            size = min(size, (len(self._queue) + 1) // 2)
        items = self._queue[:size]
        del self._queue[:size]
        self._m_queue.set(len(self._queue))
        self._m_batch.observe(len(items))
        return items

    def _prepare(self, items: list[tuple[c.Command, asyncio.Future[Reply]]], checkpoint: bool = False) -> _Batch:
        """Apply a batch to the ledger (a new undo frame) and build the rows its commit writes
        (with the checkpoint when one is due, or asked for)."""
        ledger = self.ledger
        self._counts = {}
        applying = time.perf_counter()
        first_seq = ledger.next_seq
        ledger.begin()
        now = self.clock()
        replies = [self._apply(command, now) for command, _ in items]
        begin = self._checkpoint_due(force=checkpoint)
        rows = None if checkpoint else self._round_slice(len(items), begin)
        changes = ledger.collect(begin, rows)
        write = BatchWrite(
            accounts=[account.state() for account in changes.accounts],
            holds=[hold.state() for hold in changes.holds],
            holds_deleted=changes.holds_deleted,
            checkpoint_seq=changes.checkpoint_seq,
            journal=[entry.row() for entry in changes.entries],
            outbox=[outbox_row(ledger.event_seq(), event) for event in changes.events],
            keys=list(changes.keys),
            transfers_started=list(changes.transfers_started),
            transfers_completed=list(changes.transfers_completed),
            moves=list(changes.moves),
        )
        self.storage.prepare(write)  # e.g. SQL text, built while the previous batch commits
        op_keys = [(entry.account_id, entry.op_key) for entry in changes.entries if entry.op_key]
        batch = _Batch(items, replies, self._counts, write, first_seq, op_keys, changes.remote_holds)
        batch.applied_s = time.perf_counter() - applying
        batch.expiries = sum(count for (kind, _), count in self._counts.items() if kind == "expire")
        return batch

    def _checkpoint_due(self, force: bool = False) -> bool:
        """Begin a checkpoint round (holds and accounts) with this batch? Every ``checkpoint_interval_s``
        or ``CHECKPOINT_ROWS`` journal rows, whichever comes first (or when ``force``d, if anything is
        unsaved), and not while one is being written: recovery then replays at most about twice
        that much journal on top of the tables."""
        ledger, now = self.ledger, time.monotonic()
        self._m_unsaved.set(ledger.unsaved_holds + ledger.round_rows)
        self._m_unsaved_accounts.set(ledger.unsaved_accounts)
        if (
            ledger.checkpointing
            or not (ledger.unsaved_holds or ledger.unsaved_accounts)
            or (
                not force
                and now - self._checkpointed_at < self.checkpoint_interval_s
                and ledger.next_seq - self.checkpoint_from < CHECKPOINT_ROWS
            )
        ):
            return False
        self._checkpointed_at, self.checkpoint_from = now, ledger.next_seq
        self._m_checkpoints.inc()
        return True

    def _round_slice(self, commands: int, begun: bool) -> int:
        """How many rows of the checkpoint round this batch writes: those due by now (the round
        spread evenly over ``checkpoint_spread_s`` from its start), and at least
        ``checkpoint_slice_rows`` plus one per command."""
        ledger = self.ledger
        floor = self.checkpoint_slice_rows + commands
        if begun:  # (the round is taken from what is unsaved when this batch is collected)
            self._round_rows = ledger.unsaved_holds + ledger.unsaved_accounts
            return floor
        if not ledger.checkpointing:
            return floor
        spread = self.checkpoint_spread_s
        elapsed = time.monotonic() - self._checkpointed_at
        share = 1.0 if spread <= 0 or elapsed >= spread else elapsed / spread
        written = self._round_rows - ledger.round_rows
        return max(floor, int(self._round_rows * share) - written)

    def _start_commit(self, batch: _Batch, after: asyncio.Future[None] | None) -> None:
        """Start writing ``batch``; it takes effect only if ``after`` (the batch before) does."""
        batch.started = time.perf_counter()
        # A batch with nothing to write (replays only) still waits its turn: a replay of an
        # operation in the batch before it must not be answered before that batch is durable.
        work = self.storage.commit(batch.write, after) if len(batch.write) else _follow(after)
        loop = self._loop
        assert loop is not None  # batches are made only once the engine has started
        batch.commit = loop.create_task(work)  # not ensure_future: no get_event_loop() (getpid) per batch
        batch.commit.add_done_callback(lambda task: self._committed(batch, task))

    def _committed(self, batch: _Batch, task: asyncio.Future[None]) -> None:
        """Runs as soon as a commit ends. Success: the batch is durable, answer its callers."""
        self._wakeup.set()
        if task.cancelled() or task.exception() is not None:
            return  # the writer loop undoes and answers (it may have applied a batch on top)
        ended = time.perf_counter()
        self._m_commit.observe(ended - batch.started)
        # Its own time: a pipelined commit's wait for the one before it is that one's. Their sum
        # is the time the storage had a commit in flight (the writer's duty cycle; with group
        # commit it nears 1 well before capacity: what arrives meanwhile goes in the next one).
        own_s = max(0.0, ended - max(batch.started, self._commit_end))
        self._m_busy.inc(own_s)
        if batch.expiries:
            self.expiry_busy_s += max(batch.applied_s, own_s) * batch.expiries / len(batch.items)
        self._commit_end = ended
        self.ledger.accept()
        if self.on_commit is not None and (batch.write.transfers_started or batch.remote_holds):
            self.on_commit(batch.write.transfers_started, batch.remote_holds)
        for (kind, code), count in batch.counts.items():
            self.metrics.operations.labels(kind, code).inc(count)
        for (_, future), reply in zip(batch.items, batch.replies, strict=True):
            if not future.done():
                future.set_result(reply)

    async def _settle_finished(self, inflight: list[_Batch]) -> bool:
        """Settle the batches whose commits have ended, oldest first; False if one failed."""
        while inflight and inflight[0].commit is not None and inflight[0].commit.done():
            if not await self._settle(inflight):
                return False
        return True

    async def _settle(self, inflight: list[_Batch]) -> bool:
        """Wait for the oldest batch's commit and take it off ``inflight``. On failure undo it and
        every batch applied on top (their commits fail too), empty ``inflight``; False then."""
        batch = inflight[0]
        assert batch.commit is not None
        await asyncio.wait([batch.commit])
        if batch.commit.cancelled():
            raise asyncio.CancelledError
        exc = batch.commit.exception()
        self._requeued = 0
        if exc is None:
            del inflight[0]
            return True
        if not isinstance(exc, StorageError):
            raise exc  # a bug in an adapter: stop loudly
        for later in inflight[1:]:
            # Its commit was started after this one: it fails too (the storage's promise);
            # wait until it has, so nothing of it is still being written.
            if later.commit is not None and await succeeded(later.commit):
                raise RuntimeError("a batch committed although the batch before it failed")
        self.ledger.rollback()
        undone = [item for undone_batch in inflight for item in undone_batch.items]
        op_keys = [key for undone_batch in inflight for key in undone_batch.op_keys]
        inflight.clear()
        if isinstance(exc, DuplicateOperation):
            # Operation ids older than the in-memory window came back (after a restart, say):
            # read their first outcomes and apply the batches again, now as replays. Each
            # retry must learn at least one outcome, so this cannot loop.
            try:
                learned = await lookups.load(self, op_keys, [])
            except StorageError as load_exc:
                exc = load_exc
            else:
                if learned:
                    self._queue[0:0] = undone
                    self._requeued = len(undone)
                    return False
        self.metrics.commit_failures.labels(self.label).inc()
        if isinstance(exc, Fenced):
            self._answer_unavailable(undone, f"this node no longer owns shard {self.shard}; retry with the same id")
            self._fenced(exc)
            return False
        log.error("shard %s: %d commands undone, storage failed: %s", self.shard, len(undone), exc)
        self._answer_unavailable(undone, "storage is failing; retry with the same id")
        await self._resync(batch.first_seq)
        return False

    async def _resync(self, first_seq: int) -> None:
        """After a failed commit: did it land anyway (lost connection during COMMIT)? If so, reload.

        Until storage answers, the shard is unready and answers 503 at once; it asks again
        with the same backoff as at start.
        """
        self.state = RESYNCING
        self.metrics.ready.labels(self.label).set(0)
        self._answer_unavailable(self._queue, "the shard is resynchronising with storage")
        self._queue.clear()
        while True:
            self.state = RESYNCING
            try:
                if await self.storage.max_seq() >= first_seq:
                    log.warning("shard %s: a failed commit had landed; reloading from storage", self.shard)
                    inbound = self.ledger.inbound  # kept by the service, not in storage
                    unknown = self.ledger.remote_marks_unknown
                    self.ledger = await load_ledger(self)
                    self.ledger.inbound, self.ledger.remote_marks_unknown = inbound, unknown
                    if self.on_reload is not None:
                        self.on_reload(self)
                break
            except StorageError as exc:
                await self._wait_to_retry("resync", exc)
                if self.state == STOPPED:
                    return
        if self.attempts:
            log.warning("shard %s: storage answers again after %d failed attempts", self.shard, self.attempts)
        self.attempts = 0
        self.state = READY
        self.metrics.ready.labels(self.label).set(1)

    def _fenced(self, exc: Fenced) -> None:
        """Another node took the shard over: answer what waits, take nothing more (``_admit``)."""
        self.state, self.last_error = FENCED, str(exc)
        self.metrics.ready.labels(self.label).set(0)
        self._answer_unavailable(self._queue, f"this node no longer owns shard {self.shard}")
        self._queue.clear()
        log.error("shard %s: fenced, another node owns it now: %s", self.shard, exc)

    async def _wait_to_retry(self, what: str, exc: StorageError) -> None:
        """One failed attempt: one log line (no traceback: the error says it all), the state
        ``retrying`` with the error, then the backoff's wait."""
        self.attempts += 1
        self.last_error = str(exc)
        delay = self.backoff.delay(self.attempts)
        self.retry_at = time.monotonic() + delay
        self.state = RETRYING
        self.metrics.storage_retries.labels(self.label, what).inc()
        log.warning("shard %s: %s attempt %d failed, retrying in %.2fs: %s",
                    self.shard, what, self.attempts, delay, exc)  # fmt: skip
        await self.backoff.sleep(delay)

    def status(self) -> dict[str, object]:
        """What ``/readyz`` says of this shard: its state, and while storage fails, why and when next."""
        retrying = self.state == RETRYING
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "retry_in_s": round(max(0.0, self.retry_at - time.monotonic()), 3) if retrying else None,
        }

    def _answer_unavailable(self, items: list[tuple[c.Command, asyncio.Future[Reply]]], detail: str) -> None:
        reply = unavailable_reply(detail)
        for _, future in items:
            if not future.done():
                future.set_result(reply)

    def _fail(self, exc: BaseException, items: list[tuple[c.Command, asyncio.Future[Reply]]]) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._answer_unavailable(items + self._queue, "the shard is stopping")
            self._queue.clear()
            return
        self.state, self.last_error = FAILED, f"{type(exc).__name__}: {exc}"
        self.metrics.ready.labels(self.label).set(0)
        log.critical("shard %s stopped: %r", self.shard, exc, exc_info=exc)
        self._answer_unavailable(items + self._queue, "the shard failed")
        self._queue.clear()
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _apply(self, command: c.Command, now: int) -> Reply:
        outcome = self.ledger.apply(command, now)
        reply = render(command, outcome, self.shard)
        if outcome.replay is not None:
            code = "replayed"
        else:
            code = "ok" if outcome.rejection is None else outcome.rejection.code
        key = (_KIND_NAMES.get(type(command), "other"), code)
        self._counts[key] = self._counts.get(key, 0) + 1
        return reply
