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


def txn_id(account_id: str, seq: int, shard: int) -> str:
    """A history row's id: the region of its account's id, the shard that wrote the row and
    that shard's journal sequence number (``US-3-t42``). Unique across the fleet by
    construction (one journal per shard, seqs never reused), stable, and routable without a
    look-up, also after its account moved to another shard (the id names where the row is).
    Before partner moves the shard was always the account's home shard, so the ids of every
    row written before moves existed read the same either way."""
    return f"{account_id.partition('-')[0]}-{shard}-{TXN_SEQ_MARK}{seq}"


TXN_SHARD_DIGITS_MAX = 9  # as ``shards.shard_in_id`` reads an account id's shard
TXN_SEQ_DIGITS_MAX = 18  # seqs stay far below 10^18 (and SEQ_MAX, 2^63 - 1)


def txn_shard_seq(account_id: str, transaction_id: str) -> tuple[int, int] | None:
    """(shard, journal seq) a transaction id names, if it is an id of ``account_id``'s region
    (``<REGION>-<shard>-t<seq>``, ASCII digits); None for anything else."""
    region = account_id.partition("-")[0]
    if not transaction_id.startswith(region + "-"):
        return None
    shard, mark, seq = transaction_id[len(region) + 1 :].partition("-" + TXN_SEQ_MARK)
    if not mark or not (shard.isascii() and shard.isdigit() and len(shard) <= TXN_SHARD_DIGITS_MAX):
        return None
    if not (seq.isascii() and seq.isdigit() and len(seq) <= TXN_SEQ_DIGITS_MAX):
        return None
    return int(shard), int(seq)
