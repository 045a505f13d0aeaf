"""Commands: what a client asks a shard writer to do (imperative names; values never changed once
made). Plain dataclasses, hashable and compared by value like frozen ones, because mypyc builds
them natively: a frozen dataclass's generated ``__init__`` (``object.__setattr__`` per field)
cost 1.9 us per PlaceHold against 0.5 us, once per operation on the hot path.

A command that the rules check authority on carries its ``actor`` (last field; not part of the
fingerprint, so a replay by another allowed key answers the same). Commands built inside the
service (recovery, the expiry sweep, tests of the engine) default to the admin actor."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from balance.domain.authority import ADMIN_ACTOR, Actor


def _fingerprint(fields: tuple) -> int:  # type: ignore[type-arg]
    """A stable 63-bit hash of a request body: same body, same fingerprint, in every process."""
    digest = hashlib.blake2b(repr(fields).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(unsafe_hash=True, slots=True)
class CreateAccount:
    account_id: str
    parent_id: str | None
    kind: str
    region: str
    currency: str
    name: str
    credit_limit: int
    metadata: bytes
    client_id: str | None = None  # the client's id of this creation: a retry replays it (``ids.client_account_id``)

    def fingerprint(self) -> int:
        """The body of the creation (its id is derived from the client id, so not part of it)."""
        return _fingerprint((
            "account", self.parent_id, self.kind, self.region, self.currency, self.name, self.credit_limit,
            self.metadata,
        ))  # fmt: skip


@dataclass(unsafe_hash=True, slots=True)
class UpdateAccount:
    account_id: str
    status: str | None = None
    name: str | None = None
    metadata: bytes | None = None
    credit_limit: int | None = None
    actor: Actor = field(default=ADMIN_ACTOR, compare=False)


@dataclass(unsafe_hash=True, slots=True)
class CreateKey:
    """Store an API key's row (``schema.KEY_COLUMNS``): a new key of a live account."""

    account_id: str
    key_hash: str
    key_id: str = ""
    prefix: str = ""
    scopes: int = 0
    client_id: str | None = None
    created_at: int = 0


@dataclass(unsafe_hash=True, slots=True)
class RevokeKey:
    """Rewrite an API key's row with its revocation time (also for a closed account)."""

    account_id: str
    row: tuple  # type: ignore[type-arg]  # KEY_COLUMNS, revoked_at set


@dataclass(unsafe_hash=True, slots=True)
class _OutsideMovement:
    """Money into or out of one account from the outside world (a credit or a debit)."""

    account_id: str
    op_id: str
    amount: int
    description: str = ""
    metadata: bytes = b"{}"

    def kind(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> int:
        return _fingerprint((self.kind(), self.account_id, self.op_id, self.amount, self.description, self.metadata))


@dataclass(unsafe_hash=True, slots=True)
class Credit(_OutsideMovement):
    def kind(self) -> str:
        return "credit"


@dataclass(unsafe_hash=True, slots=True)
class Debit(_OutsideMovement):
    def kind(self) -> str:
        return "debit"


@dataclass(unsafe_hash=True, slots=True)
class Transfer:
    op_id: str
    from_account_id: str
    to_account_id: str
    amount: int
    currency: str
    description: str = ""
    metadata: bytes = b"{}"

    @property
    def account_id(self) -> str:
        return self.from_account_id

    def fingerprint(self) -> int:
        return _fingerprint((
            "transfer", self.op_id, self.from_account_id, self.to_account_id, self.amount,
            self.currency, self.description, self.metadata,
        ))  # fmt: skip


@dataclass(unsafe_hash=True, slots=True)
class TransferOut:
    """First leg of a transfer to another shard, on the source shard: source -> transit.

    Its outcome stays *in progress* (status 202 inside the service) until ``CompleteTransfer``;
    its id, fingerprint and replay are those of the client's ``Transfer``.
    """

    transfer: Transfer

    @property
    def account_id(self) -> str:
        return self.transfer.from_account_id


@dataclass(unsafe_hash=True, slots=True)
class TransferIn:
    """Second leg, on the target shard: transit -> target. Idempotent; never refused."""

    transfer: Transfer

    @property
    def account_id(self) -> str:
        return self.transfer.to_account_id


@dataclass(unsafe_hash=True, slots=True)
class CompleteTransfer:
    """Back on the source shard: the transfer's final answer, which replays will give."""

    from_account_id: str
    op_id: str
    body: bytes
    status: int = 201  # the final status: 201 for a transfer, 200 for a hold's capture

    @property
    def account_id(self) -> str:
        return self.from_account_id


@dataclass(unsafe_hash=True, slots=True)
class ReturnTransfer:
    """Back on the source shard: the target refused its leg (closed, say); transit -> source,
    and the target's refusal (``status``, ``body``) becomes the operation's recorded answer."""

    transfer: Transfer
    status: int
    body: bytes
    code: str = ""

    @property
    def account_id(self) -> str:
        return self.transfer.from_account_id


@dataclass(unsafe_hash=True, slots=True)
class ResumeLeg:
    """Recovery: the recorded outcome of the source leg of a pending cross-shard movement
    (a transfer, or a hold's capture), read back from storage if memory no longer has it."""

    from_account_id: str
    op_id: str

    @property
    def account_id(self) -> str:
        return self.from_account_id


@dataclass(unsafe_hash=True, slots=True)
class RemoteAccount:
    """What the service read of an account on another shard (committed state), for a rule
    that needs it: the destination of a hold. ``found`` False: no such account there."""

    found: bool
    currency: str = ""
    status: str = ""
    is_system: bool = False


@dataclass(unsafe_hash=True, slots=True)
class PlaceHold:
    account_id: str
    op_id: str  # the hold id, chosen by the client (the order id)
    amount: int
    expires_in_s: int
    destination_account_id: str | None = None
    description: str = ""
    metadata: bytes = b"{}"
    actor: Actor = field(default=ADMIN_ACTOR, compare=False)  # recorded as the hold's ``placed_by``
    # Set by the service when the destination lives on another shard (not part of the body).
    remote_destination: RemoteAccount | None = None

    def fingerprint(self) -> int:
        return _fingerprint((
            "hold", self.account_id, self.op_id, self.amount, self.expires_in_s,
            self.destination_account_id, self.description, self.metadata,
        ))  # fmt: skip


@dataclass(unsafe_hash=True, slots=True)
class CaptureHold:
    account_id: str
    hold_id: str
    amount: int | None = None  # None: the whole hold
    actor: Actor = field(default=ADMIN_ACTOR, compare=False)

    def fingerprint(self) -> int:
        return _fingerprint(("capture", self.account_id, self.hold_id, self.amount))


@dataclass(unsafe_hash=True, slots=True)
class ReleaseHold:
    account_id: str
    hold_id: str
    actor: Actor = field(default=ADMIN_ACTOR, compare=False)

    def fingerprint(self) -> int:
        return _fingerprint(("release", self.account_id, self.hold_id))


@dataclass(unsafe_hash=True, slots=True)
class RecordResultConflict:
    """A payment result that says ``succeeded`` for a hold already expired or released: the
    payment went through, the money did not move. Changes nothing; writes a
    ``hold.result_conflict`` outbox event in a commit, so that it is published and served like
    every event (``balance.results``)."""

    account_id: str
    hold_id: str
    hold: tuple  # type: ignore[type-arg]  # the hold as read (``Hold.state()``): settled, it no longer changes
    result: tuple[tuple[str, object], ...]  # the message's fields, as pairs (hashable)


@dataclass(unsafe_hash=True, slots=True)
class ExpireHold:
    """Issued by the shard's own expiry sweep, never by a client."""

    account_id: str
    hold_id: str


@dataclass(unsafe_hash=True, slots=True)
class FreezeMove:
    """Source shard: from now on the subtree of ``root_id`` takes no new operation (they answer
    ``account_moving``) until the move ends. In memory only: a restart thaws it (the move is
    then exported again: ``MoveOut`` checks the versions it was exported at)."""

    move_id: str
    root_id: str

    @property
    def account_id(self) -> str:
        return self.root_id


@dataclass(unsafe_hash=True, slots=True)
class ThawMove:
    """Source shard: the move was given up before its ``MoveOut``: the subtree serves again."""

    move_id: str
    root_id: str

    @property
    def account_id(self) -> str:
        return self.root_id


@dataclass(unsafe_hash=True, slots=True)
class MoveOut:
    """Source shard: the frozen subtree leaves, as exported (``versions``: (account, version)
    of each account of the export). Balances go to the shard's transit accounts, pending holds
    end ``moved``, accounts become ``moved``. Idempotent by ``move_id``."""

    move_id: str
    root_id: str
    to_shard: int
    versions: tuple[tuple[str, int], ...]
    # The move's durable record (``move_records.MOVE_RECORD_FIELDS`` rows: the step and the
    # export), written in the same commit (its ``source_seq`` filled in there).
    record: tuple[tuple, ...] = ()  # type: ignore[type-arg]

    @property
    def account_id(self) -> str:
        return self.root_id


@dataclass(unsafe_hash=True, slots=True)
class MoveIn:
    """Target shard (or the source, to roll a move back): the exported subtree arrives. Balances
    come from the shard's transit accounts. ``accounts``: ``Account.state()`` tuples, parents
    first; ``holds``: pending ``Hold.state()`` tuples; ``records``: (account, op_key,
    fingerprint, status, body) first answers. Idempotent by ``move_id`` and ``tag``."""

    move_id: str
    root_id: str
    accounts: tuple[tuple, ...]  # type: ignore[type-arg]
    holds: tuple[tuple, ...]  # type: ignore[type-arg]
    records: tuple[tuple[str, str, int, int, bytes], ...]
    tag: str = "in"  # "in" on the target, "back" when the source takes its subtree back
    # Where it left, and the seq of its ``MoveOut`` there: a reader of this shard's events
    # publishes none of the subtree's until that shard's are published up to there.
    from_shard: int = -1
    source_seq: int = 0
    # A large subtree arrives in parts (each one commit; parents in a part before or with their
    # children), so that the shard's other traffic need not wait behind one huge commit. Part 0
    # is the root, idempotent by the move id and ``tag``, and checks that none of the accounts
    # of the later parts (``later``) lives here; a later part is idempotent by what arrived
    # (``domain.moves.move_in``) and is not refused.
    part: int = 0
    later: tuple[str, ...] = ()

    @property
    def account_id(self) -> str:
        return self.root_id


@dataclass(unsafe_hash=True, slots=True)
class RecordMove:
    """Source shard: a later step of a move into its durable record (``domain.move_records``)."""

    move_id: str
    root_id: str
    rows: tuple[tuple, ...]  # type: ignore[type-arg]

    @property
    def account_id(self) -> str:
        return self.root_id


MoneyCommand = Credit | Debit | Transfer | PlaceHold | CaptureHold | ReleaseHold | ExpireHold
CrossShardCommand = TransferOut | TransferIn | CompleteTransfer | ReturnTransfer | ResumeLeg
MoveCommand = FreezeMove | ThawMove | MoveOut | MoveIn | RecordMove
Command = (
    MoneyCommand
    | CrossShardCommand
    | CreateAccount
    | UpdateAccount
    | CreateKey
    | RevokeKey
    | RecordResultConflict
    | MoveCommand
)
