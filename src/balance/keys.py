"""API keys in memory: who a key is (its account and scopes), listing, revocation, and the
admin key's hash kept in the data directory.

A key is a random 256-bit token shown once at creation; only its SHA-256 is stored. A key
created with a client id replays like a money operation: the same id and scopes answer the
same key id and prefix again, marked ``replayed``, WITHOUT the secret (it was shown once and
is not kept anywhere); another body under the same id is 409 ``idempotency_conflict``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from balance.domain import authority as a
from balance.domain.model import principal
from balance.views import timestamp

PREFIX_CHARS = 8  # "bk_" and 5 characters: enough to tell keys apart, useless to guess one
ADMIN_KEY_FILE = "admin-key.sha256"


def hash_key(key: str) -> str:
    """API keys are random 256-bit tokens: a plain SHA-256 is the right hash (no brute force)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True)
class KeyRecord:
    key_hash: str
    account_id: str
    created_at: int
    key_id: str
    prefix: str
    scopes: int
    revoked_at: int | None
    client_id: str | None
    actor: a.Actor  # built once: the hot path hands it out as is

    @classmethod
    def from_row(cls, row: tuple) -> KeyRecord:  # type: ignore[type-arg]
        """A stored row (``schema.KEY_COLUMNS``). Rows of an earlier version have no id, prefix
        or scopes: they get an id from their hash and a partner key's scopes (read, move)."""
        key_hash, account_id, created_at, key_id, prefix, scopes, revoked_at, client_id = row
        key_id = key_id or "key_" + key_hash[:16]
        scopes = a.PARTNER_DEFAULT if scopes is None else int(scopes)
        return cls(
            key_hash, account_id, int(created_at), key_id, prefix or "", scopes, revoked_at, client_id,
            a.Actor(principal(account_id), scopes, key_id),
        )  # fmt: skip

    def row(self) -> tuple:  # type: ignore[type-arg]
        return (
            self.key_hash, self.account_id, self.created_at, self.key_id, self.prefix, self.scopes,
            self.revoked_at, self.client_id,
        )  # fmt: skip

    def view(self) -> dict[str, object]:
        """What a listing shows: never the key nor its hash."""
        return {
            "key_id": self.key_id, "account_id": self.account_id, "prefix": self.prefix,
            "scopes": a.scope_names(self.scopes), "created_at": timestamp(self.created_at),
            "revoked_at": None if self.revoked_at is None else timestamp(self.revoked_at),
            "client_id": self.client_id,
        }  # fmt: skip


class KeyRegistry:
    """Every key of every shard, by hash, by id, and by (account, client id)."""

    def __init__(self) -> None:
        self.by_hash: dict[str, KeyRecord] = {}
        self.by_id: dict[str, KeyRecord] = {}
        self.by_client_id: dict[tuple[str, str], KeyRecord] = {}

    def add(self, record: KeyRecord) -> None:
        self.by_hash[record.key_hash] = record
        self.by_id[record.key_id] = record
        if record.client_id is not None:
            self.by_client_id[(record.account_id, record.client_id)] = record

    def live(self, key_hash: str) -> KeyRecord | None:
        record = self.by_hash.get(key_hash)
        return None if record is None or record.revoked_at is not None else record

    def of_account(self, account_id: str) -> list[KeyRecord]:
        return sorted(
            (r for r in self.by_id.values() if r.account_id == account_id), key=lambda r: (r.created_at, r.key_id)
        )


def admin_key_hash(admin_key: str, generated: bool, data_dir: Path) -> tuple[str, str | None]:
    """(the admin key's SHA-256, the key to print once or None).

    A key from ``BALANCE_ADMIN_KEY`` is used as is. Without it, the first start keeps the hash
    of a new key in ``<data dir>/admin-key.sha256`` and prints the key once; later starts read
    the hash, so the printed key stays valid across restarts (delete the file to get a new one).
    """
    if not generated:
        return hash_key(admin_key), None
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path.read_text().strip(), None
    data_dir.mkdir(parents=True, exist_ok=True)
    fresh = path.with_suffix(".tmp")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(hash_key(admin_key) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(fresh, path)
    return hash_key(admin_key), admin_key
