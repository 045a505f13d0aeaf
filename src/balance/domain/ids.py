"""The ids the ledger derives: an operation's idempotency key, a history row's id, and a shard's
system accounts.

A module of their own: the rules, the ledger and the storage adapters all use them.
"""

from __future__ import annotations

import hashlib

# Kinds whose client-chosen id shares one key per account: a credit ``x`` and then a debit ``x``
# on one account are one id used twice (409 ``idempotency_conflict``), not two operations.
# A hold's capture, release and expiry, and a cross-shard transfer's arriving leg, keep keys of
# their own kind: they are named by the hold or the transfer, not by a new client id.
CLIENT_OP_KINDS = ("credit", "debit", "transfer", "hold")
CLIENT_OP_PREFIX = "op:"
TXN_SEQ_MARK = "t"  # a history row's id: <REGION>-<shard>-t<journal seq>


def system_account_id(shard: int, currency: str, kind: str) -> str:
    return f"SYS-{shard}-{kind}-{currency}"


def is_system_account_id(shard: int, account_id: str) -> bool:
    """One of the shard's system accounts, whether it exists yet or not (a fact of the id alone)."""
    return account_id.startswith(f"SYS-{shard}-")


def op_key_of(kind: str, op_id: str) -> str:
    if kind in CLIENT_OP_KINDS:
        return CLIENT_OP_PREFIX + op_id
    return f"{kind}:{op_id}"


def legacy_op_key(kind: str, op_id: str) -> str:
    """The key an earlier version gave a client operation (one namespace per kind)."""
    return f"{kind}:{op_id}"


def hold_journal_keys(hold_id: str) -> tuple[str, str, str, str, str]:
    """The keys of a hold's primary journal rows: placed, captured, released, expired, and the
    placement's key in an earlier version's journal."""
    return (
        CLIENT_OP_PREFIX + hold_id, f"capture:{hold_id}", f"release:{hold_id}", f"expire:{hold_id}",
        legacy_op_key("hold", hold_id),
    )  # fmt: skip


ACCOUNT_OP_KIND = "account"  # the key of an account's creation under a client id
REGION_OF_ID_PARTS = 3  # <REGION>-<shard>-<16 hex>


def client_account_suffix(parent_id: str | None, client_id: str) -> str:
    """The last part of the id of the account created under ``client_id`` below ``parent_id``
    (None: top level): 16 hex digits like a random id's, the same for every retry, so that a
    retry finds the account it created (scoped per parent: two parents' ``x`` differ)."""
    scope = "" if parent_id is None else parent_id
    return hashlib.blake2b(f"{scope}\n{client_id}".encode(), digest_size=8).hexdigest()


def txn_id(account_id: str, seq: int) -> str:
    """A history row's id: the region and home shard of its account's id (as account ids name
    them: ``US-3-...``) and the shard's journal sequence number. Unique across the service (one
    journal per shard, never reused), stable across restarts, routable without a look-up."""
    region, _, rest = account_id.partition("-")
    shard = rest.partition("-")[0]
    return f"{region}-{shard}-{TXN_SEQ_MARK}{seq}"


def txn_seq(account_id: str, transaction_id: str) -> int | None:
    """The journal seq a transaction id names, if it is an id of ``account_id``'s rows."""
    prefix = txn_id(account_id, 0)[:-1]
    digits = transaction_id[len(prefix) :]
    if not transaction_id.startswith(prefix) or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(digits)
