"""Table shapes shared by the adapters: column orders of the row tuples, and the DDL."""

from __future__ import annotations

from balance.domain.holds import HOLD_JOURNAL_FIELDS
from balance.domain.ids import CLIENT_OP_KINDS, CLIENT_OP_PREFIX
from balance.domain.ledger import RECOVERY_JOURNAL_FIELDS
from balance.domain.model import ACCOUNT_FIELDS, HOLD_FIELDS, MOVE_KINDS, OPEN
from balance.domain.move_records import MOVE_RECORD_FIELDS

ACCOUNT_COLUMNS = ACCOUNT_FIELDS
HOLD_COLUMNS = HOLD_FIELDS
# The holds table's primary key. Expiry first: holds are placed in about the order they expire
# in (now + the same expiry, mostly), so a checkpoint round's new holds go in at one end of the
# table a page at a time, where by (account, id) each row landed on a page of its own (SQLite
# writes each page a commit dirties, whole). The expiry job reads the same order. A round's 16
# holds per commit on SQLite: 0.75-0.85 -> 0.27-0.32 ms (``tools/round_row_cost.py``).
HOLD_KEY_COLUMNS = ("expires_at", "account_id", "id")
JOURNAL_COLUMNS = (
    "seq", "account_id", "op_key", "kind", "op_id", "status", "code", "fingerprint", "amount",
    "currency", "counterparty_account_id", "hold_id", "balance_after", "reserved_after",
    "version", "created_at", "description", "metadata", "result", "expires_at", "destination_account_id",
    "placed_by",
)  # fmt: skip
# What rebuilds a hold from its journal rows (``balance.domain.holds.hold_from_journal``).
HOLD_JOURNAL_COLUMNS = HOLD_JOURNAL_FIELDS
# What recovery replays on top of the checkpoint (``Ledger.replay_journal_row``).
RECOVERY_JOURNAL_COLUMNS = RECOVERY_JOURNAL_FIELDS
# Columns added to the journal since its first version (added at open to an older database).
JOURNAL_COLUMNS_ADDED = {
    "expires_at": "BIGINT NULL", "destination_account_id": "VARCHAR(64) NULL", "placed_by": "VARCHAR(64) NULL",
}  # fmt: skip
# Columns added to other tables since their first version (added at open, as above).
COLUMNS_ADDED = {
    "accounts": {"frozen_by": "VARCHAR(64) NULL"},
    "outbox": {"data": "BLOB NULL"},
    "holds": {"placed_by": "VARCHAR(64) NULL"},
    "api_keys": {
        "key_id": "VARCHAR(40) NULL", "prefix": "VARCHAR(16) NULL", "scopes": "INT NULL",
        "revoked_at": "BIGINT NULL", "client_id": "VARCHAR(64) NULL",
    },
}  # fmt: skip
# Columns whose type changed since their first version: (table, column) -> the type now
# (an earlier version's database is altered at open; SQLite's dynamic types need no change).
# A system account's balance has no bound (it takes the other side of every account of its
# currency): DECIMAL(39,0) holds any sum of 2^64 accounts at +-2^62 each. An op key names
# the source account and the id of a cross-shard leg (a hold's capture leg id is longer).
COLUMNS_CHANGED = {
    ("accounts", "balance"): "DECIMAL(39,0) NOT NULL",
    ("journal", "op_key"): "VARCHAR(160) NULL",
    ("transfers_pending", "op_id"): "VARCHAR(80) NOT NULL",
}
# The meta row: the holds and accounts tables reflect the journal up to this seq. (Named when
# only holds were checkpointed; kept so that databases already written open unchanged.)
CHECKPOINT_META_KEY = "holds_checkpoint_seq"
CHECKPOINT_SEQ_SQL = f"(SELECT value FROM meta WHERE name = '{CHECKPOINT_META_KEY}')"  # in SQL
# SQLite: the history table holds the journal's pairs up to this seq (filled a slice at a time).
HISTORY_META_KEY = "history_seq"
HISTORY_SEQ_SQL = f"(SELECT value FROM meta WHERE name = '{HISTORY_META_KEY}')"  # in SQL
# The meta row saying the journal's client operation keys are shared per account ("op:<id>",
# ``balance.domain.ids.op_key_of``); an earlier version's database is migrated once at open.
OP_KEYS_META_KEY = "op_keys_shared"


def op_keys_migration_sql(concat: str) -> str:
    """An earlier version keyed a client operation by kind (``credit:x``, ``debit:x``...). Each
    such key becomes ``op:x``, except where one account used ``x`` for several kinds: the first
    of those (by seq) takes ``op:x`` and replays its first answer; the later ones keep their old
    key, so their rows stay in the history, and a replay of them answers 409 (the id is taken).
    ``concat`` joins SQL strings: ``"{} || {}"`` for SQLite, ``"CONCAT({}, {})"`` for MariaDB.
    (The derived table lets MariaDB read the table it updates.)"""
    kinds = ",".join(f"'{kind}'" for kind in CLIENT_OP_KINDS)
    old_key = concat.format(concat.format("kind", "':'"), "op_id")
    return (
        f"UPDATE journal SET op_key = {concat.format(repr(CLIENT_OP_PREFIX), 'op_id')} WHERE seq IN ("
        f"SELECT seq FROM (SELECT MIN(seq) AS seq FROM journal WHERE kind IN ({kinds}) AND op_key = {old_key}"
        " GROUP BY account_id, op_id) AS firsts)"
    )


# An outbox row: a fact about an account that no journal row holds (``domain.model.Event``);
# ``data`` is the account after it (and before it, for an update) as JSON (``events.outbox``).
OUTBOX_COLUMNS = ("seq", "kind", "account_id", "version", "created_at", "data")
# How far each event sink has published (meta rows, ``events_<sink>_seq``; the relay's cursor).
EVENTS_CURSOR_META_PREFIX = "events_"
KEY_COLUMNS = ("key_hash", "account_id", "created_at", "key_id", "prefix", "scopes", "revoked_at", "client_id")
# A partner move's durable record on its source shard (``domain.move_records``): part 0 the
# step, parts 1.. the export. A table added since the first version: created at open.
MOVE_COLUMNS = MOVE_RECORD_FIELDS
MOVES_UNFINISHED = "SELECT {columns} FROM moves WHERE part = 0 AND step NOT IN ('done', 'rolled_back') ORDER BY move_id"
MOVE_PARTS = "SELECT data FROM moves WHERE move_id = {p} AND part > 0 ORDER BY part"
TRANSFER_COLUMNS = (
    "account_id", "op_id", "to_account_id", "amount", "currency", "description", "metadata", "created_at",
)  # fmt: skip

# Types are written for MariaDB; the SQLite adapter maps them (SQLite is dynamically typed).
TABLES = {
    "accounts": """
        id VARCHAR(64) NOT NULL PRIMARY KEY,
        parent_id VARCHAR(64) NULL,
        kind VARCHAR(16) NOT NULL,
        region VARCHAR(8) NOT NULL,
        currency CHAR(3) NOT NULL,
        name VARCHAR(200) NOT NULL,
        status VARCHAR(8) NOT NULL,
        balance DECIMAL(39,0) NOT NULL,
        reserved BIGINT NOT NULL,
        credit_limit BIGINT NOT NULL,
        exhausted BOOLEAN NOT NULL,
        version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        metadata BLOB NOT NULL,
        frozen_by VARCHAR(64) NULL""",
    "holds": """
        account_id VARCHAR(64) NOT NULL,
        id VARCHAR(64) NOT NULL,
        amount BIGINT NOT NULL,
        captured_amount BIGINT NOT NULL,
        currency CHAR(3) NOT NULL,
        status VARCHAR(8) NOT NULL,
        destination_account_id VARCHAR(64) NULL,
        expires_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        description VARCHAR(500) NOT NULL,
        metadata BLOB NOT NULL,
        placed_by VARCHAR(64) NULL,
        PRIMARY KEY (expires_at, account_id, id)""",
    "journal": """
        seq BIGINT NOT NULL PRIMARY KEY,
        account_id VARCHAR(64) NOT NULL,
        op_key VARCHAR(160) NULL,
        kind VARCHAR(16) NOT NULL,
        op_id VARCHAR(64) NOT NULL,
        status SMALLINT NOT NULL,
        code VARCHAR(32) NOT NULL,
        fingerprint BIGINT NOT NULL,
        amount BIGINT NOT NULL,
        currency CHAR(3) NOT NULL,
        counterparty_account_id VARCHAR(64) NULL,
        hold_id VARCHAR(64) NULL,
        balance_after BIGINT NOT NULL,
        reserved_after BIGINT NOT NULL,
        version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        description VARCHAR(500) NOT NULL,
        metadata BLOB NOT NULL,
        result BLOB NOT NULL,
        expires_at BIGINT NULL,
        destination_account_id VARCHAR(64) NULL,
        placed_by VARCHAR(64) NULL""",
    "outbox": """
        seq BIGINT NOT NULL PRIMARY KEY,
        kind VARCHAR(32) NOT NULL,
        account_id VARCHAR(64) NOT NULL,
        version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        data BLOB NULL""",
    "transfers_pending": """
        account_id VARCHAR(64) NOT NULL,
        op_id VARCHAR(80) NOT NULL,
        to_account_id VARCHAR(64) NOT NULL,
        amount BIGINT NOT NULL,
        currency CHAR(3) NOT NULL,
        description VARCHAR(500) NOT NULL,
        metadata BLOB NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (account_id, op_id)""",
    "meta": """
        name VARCHAR(32) NOT NULL PRIMARY KEY,
        value BIGINT NOT NULL""",
    "moves": """
        move_id VARCHAR(40) NOT NULL,
        part INT NOT NULL,
        root_id VARCHAR(64) NOT NULL,
        from_shard INT NOT NULL,
        to_shard INT NOT NULL,
        step VARCHAR(16) NOT NULL,
        source_seq BIGINT NOT NULL,
        error VARCHAR(500) NOT NULL,
        updated_at BIGINT NOT NULL,
        data LONGBLOB NOT NULL,
        PRIMARY KEY (move_id, part)""",
    "api_keys": """
        key_hash CHAR(64) NOT NULL PRIMARY KEY,
        account_id VARCHAR(64) NOT NULL,
        created_at BIGINT NOT NULL,
        key_id VARCHAR(40) NULL,
        prefix VARCHAR(16) NULL,
        scopes INT NULL,
        revoked_at BIGINT NULL,
        client_id VARCHAR(64) NULL""",
}


def nullable_columns() -> frozenset[str]:
    """Every column declared ``NULL`` in ``TABLES`` (read off the DDL, so none is forgotten)."""
    found = set()
    for ddl in TABLES.values():
        for line in ddl.splitlines():
            words = line.strip().rstrip(",").split()
            if len(words) >= 3 and words[-1] == "NULL" and words[-2] != "NOT":
                found.add(words[0])
    return frozenset(found)


def recovery_journal_query(placeholder: str) -> str:
    """Recovery's read of the journal after the checkpoint: accepted rows with seq > ?, by seq,
    at most ? (``RECOVERY_JOURNAL_COLUMNS``)."""
    return (
        f"SELECT {','.join(RECOVERY_JOURNAL_COLUMNS)} FROM journal WHERE seq > {placeholder}"
        f" AND status < 300 ORDER BY seq LIMIT {placeholder}"
    )


# An account's creation under a client id keeps its first answer in the journal (a row of kind
# ``open``); the history lists money, not that row.
# Nor the rows of a partner move (``domain.moves``): an account or hold leaving or arriving, and
# the first answers carried to the new shard (each shows where it was written).
_HIDDEN = ",".join(f"'{kind}'" for kind in (OPEN, *MOVE_KINDS))
HISTORY_SHOWN = f" AND kind NOT IN ({_HIDDEN})"
HISTORY_SHOWN_J = f" AND j.kind NOT IN ({_HIDDEN})"


def history_query(
    placeholder: str,
    account_id: str,
    limit: int,
    before_seq: int | None,
    since: int | None,
    until: int | None,
    *,
    history_table: bool = False,
) -> tuple[str, list[object]]:
    """The history read (accepted journal rows of one account, newest first), for either driver's
    placeholder style (``?`` or ``%s``). With ``history_table`` (SQLite): rows up to the
    history table's seq through it, the rest from the journal after it; one statement, so
    both parts come from the same snapshot."""
    p = placeholder
    filters = (("seq <", before_seq), ("created_at >=", since), ("created_at <", until))
    wanted = [(condition, value) for condition, value in filters if value is not None]

    def where(seq: str = "", row: str = "") -> str:  # table prefixes of seq and of the row's columns
        return "".join(f" AND {seq if c.startswith('seq') else row}{c} {p}" for c, _ in wanted)

    values = [value for _, value in wanted]
    columns = ",".join(JOURNAL_COLUMNS)
    if not history_table:
        sql = f"SELECT {columns} FROM journal WHERE account_id = {p} AND status < 300{HISTORY_SHOWN}{where()}"
        return sql + f" ORDER BY seq DESC LIMIT {p}", [account_id, *values, int(limit)]
    newer = (
        f"SELECT {columns} FROM journal WHERE seq > {HISTORY_SEQ_SQL}"
        f" AND account_id = {p} AND status < 300{HISTORY_SHOWN}{where()} ORDER BY seq DESC LIMIT {p}"
    )
    older = (
        f"SELECT {','.join('j.' + c for c in JOURNAL_COLUMNS)} FROM history h JOIN journal j ON j.seq = h.seq"
        f" WHERE h.account_id = {p} AND j.status < 300{HISTORY_SHOWN_J}{where('h.', 'j.')} ORDER BY h.seq DESC LIMIT {p}"
    )
    sql = f"SELECT * FROM ({newer}) UNION ALL SELECT * FROM ({older}) ORDER BY seq DESC LIMIT {p}"
    return sql, [account_id, *values, int(limit), account_id, *values, int(limit), int(limit)]


INDEXES = (
    ("accounts_by_parent", "accounts", "parent_id, id", False),
    # Idempotency: one outcome per (operation key, account). The key leads: ids that grow with
    # time (ULIDs, snowflakes, counters: most order ids) then go in at one end of the index
    # instead of into every account's part of it, one page written per row. Measured on the
    # bench's journal ceiling: SQLite +47%, MariaDB (2 writers) +21%. Random ids cost as before.
    ("journal_key", "journal", "op_key, account_id", True),
    # The event relay: an account's later updates (the outbox is small: pruned once published).
    ("outbox_by_account", "outbox", "account_id, seq", False),
)
# Dropped from an earlier version's database: ``journal_op_key`` (replaced by ``journal_key``), and
# ``holds_by_status`` (status, account_id, id): the holds table keeps pending holds only (a
# checkpoint deletes a finished hold's row), so the primary key already orders them for
# recovery's pages, and each hold a checkpoint wrote cost a page of this index too (SQLite, a
# round's holds 16 per commit: 0.82 -> 0.71 ms, ``tools/round_row_cost.py``); and
# ``holds_by_expiry`` (status, expires_at, account_id, id): the primary key is in that order now.
INDEXES_DROPPED = (("journal_op_key", "journal"), ("holds_by_status", "holds"), ("holds_by_expiry", "holds"))

# An account's history, newest first. MariaDB indexes the journal by (account_id, seq): its
# redo log records only the bytes an insert changes. SQLite writes every page a commit
# touches, whole, to its WAL: on spread-out workloads each row's entry lands on a page of its
# own, so a commit of 2,000 rows wrote ~2,000 index pages (8 MB) and the writer spent its time
# in fdatasync. SQLite keeps the same pairs in a table of its own instead, filled a few
# thousand rows at a time in account order (with a batch, ``HISTORY_META_KEY`` moving with
# them); rows after that are read off the journal's tail (``history_query``).
HISTORY_INDEX = ("journal_history", "journal", "account_id, seq", False)
SQLITE_TABLES = {
    "history": """
        account_id VARCHAR(64) NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (account_id, seq)""",
}
SQLITE_INDEXES_DROPPED = (("journal_history", "journal"),)  # an earlier version's, once its pairs are copied


def indexes(backend: str) -> tuple[tuple[str, str, str, bool], ...]:
    """The secondary indexes of ``backend`` ("sqlite" or "mariadb")."""
    return INDEXES if backend == "sqlite" else (*INDEXES, HISTORY_INDEX)


def history_fill_sql(after: str, up_to: str) -> str:
    """SQLite: the (account_id, seq) pairs with ``after`` < seq <= ``up_to`` (SQL expressions)
    into the history table, in the table's order: a slice with a batch, an earlier version's
    database from 0 at open."""
    return (
        "INSERT OR IGNORE INTO history (account_id, seq) SELECT account_id, seq FROM journal"
        f" WHERE seq > {after} AND seq <= {up_to} ORDER BY account_id, seq"
    )


MOVE_RECORDS_CHUNK = 500


_MOVE_RECORD = "op_key IS NOT NULL AND SUBSTR(op_key, 1, 2) <> 'mv' AND status <> 202"


def move_records_query(placeholder: str, accounts: int, *, history_table: bool = False) -> str:
    """A partner move's export (``domain.moves``): the first answer of every operation id of
    ``accounts`` accounts (account_id, op_key, fingerprint, status, result), the move's own
    rows and transfers still in progress left out. By the accounts' index: MariaDB's
    (account_id, seq); SQLite's history table, then the journal's tail after it (its
    ``account_id`` list is given twice)."""
    marks = ",".join([placeholder] * accounts)
    columns = "account_id, op_key, fingerprint, status, result"
    if not history_table:
        return f"SELECT {columns} FROM journal WHERE account_id IN ({marks}) AND {_MOVE_RECORD}"
    return (
        f"SELECT j.account_id, j.op_key, j.fingerprint, j.status, j.result FROM history h JOIN journal j"
        f" ON j.seq = h.seq WHERE h.account_id IN ({marks}) AND j.op_key IS NOT NULL"
        " AND SUBSTR(j.op_key, 1, 2) <> 'mv' AND j.status <> 202"
        f" UNION ALL SELECT {columns} FROM journal WHERE seq > {HISTORY_SEQ_SQL} AND account_id IN ({marks})"
        f" AND {_MOVE_RECORD}"
    )
