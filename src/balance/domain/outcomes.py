"""What applying a command answers (``Outcome``), the first outcome an operation id keeps
(``Record``), what a batch changed (``Changes``), and the rejection that is not recorded.

Shared by the ledger and every rule module, so it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from balance.domain import errors as e
from balance.domain.model import Account, Entry, Event, Hold
from balance.untrack import untrack

# The status a refusal carries out of the domain: the engine replaces it with the API's status
# for the rejection's code (``balance.api.statuses``) before the outcome is answered, recorded or
# written. Accepted outcomes carry 200, 201 or 202 (the journal lists rows below 300).
REFUSED = 400


class Record:
    """The first outcome of an operation id: what a replay answers.

    A shard keeps hundreds of thousands (``limits.IDEMPOTENCY_CACHE_ENTRIES``): atomic fields
    only, untracked by the cyclic GC when made (``balance.untrack``)."""

    __slots__ = ("fingerprint", "status", "body")

    def __init__(self, fingerprint: int, status: int, body: bytes = b"") -> None:
        self.fingerprint = fingerprint
        self.status = status
        self.body = body
        untrack(self)


class Outcome:
    """What ``apply`` answers. The caller renders it at once (the accounts are live objects).

    A plain class, not a dataclass: one is made per operation, and a compiled ``__init__``
    costs a fraction of the generated one."""

    __slots__ = ("status", "rejection", "replay", "record", "entry", "accounts", "hold")

    def __init__(
        self, status: int, rejection: e.Rejection | None = None, replay: Record | None = None,
        record: Record | None = None, entry: Entry | None = None, accounts: tuple[Account, ...] = (),
        hold: Hold | None = None,
    ) -> None:  # fmt: skip
        self.status = status
        self.rejection = rejection
        self.replay = replay
        self.record = record  # to receive the rendered body
        self.entry = entry  # the primary journal row
        self.accounts = accounts
        self.hold = hold


@dataclass(slots=True)
class Changes:
    """What one accepted batch changed: the rows its commit must write."""

    # Accounts whose row this batch writes: created or changed beyond what a journal row says,
    # system accounts (no journal rows of their own), and at a checkpoint every unsaved one.
    accounts: list[Account] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)  # a checkpoint's pending holds (upserted)
    holds_deleted: list[tuple[int, str, str]] = field(default_factory=list)  # a checkpoint's finished holds, by key
    checkpoint_seq: int = 0  # > 0: the holds and accounts tables reflect the journal up to here once committed
    entries: list[Entry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    keys: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]  # KEY_COLUMNS rows, upserted
    transfers_started: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]  # TRANSFER_COLUMNS
    # (body, account, op_id, final status, the source operation's op_key)
    transfers_completed: list[tuple[bytes, str, str, int, str]] = field(default_factory=list)
    # Holds naming an account of another shard as destination, placed (True) or settled
    # (False): (account, hold id, destination, pending). That shard is told once this commits.
    remote_holds: list[tuple[str, str, str, bool]] = field(default_factory=list)
    moves: list[tuple] = field(default_factory=list)  # type: ignore[type-arg]  # ``move_records`` rows, upserted


def reject(code: str, detail: str) -> Outcome:
    """A rejection that is NOT recorded: nothing is journaled, and the same request sent again
    is checked again (``Ledger.refuse_recorded`` is the one a replay answers)."""
    return Outcome(REFUSED, rejection=e.Rejection(code, detail))
