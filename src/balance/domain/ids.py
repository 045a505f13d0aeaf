"""The ids the ledger derives: an operation's idempotency key, and a shard's system accounts.

A module of their own: the rules, the ledger and the storage adapters all use them.
"""

from __future__ import annotations


def system_account_id(shard: int, currency: str, kind: str) -> str:
    return f"SYS-{shard}-{kind}-{currency}"


def is_system_account_id(shard: int, account_id: str) -> bool:
    """One of the shard's system accounts, whether it exists yet or not (a fact of the id alone)."""
    return account_id.startswith(f"SYS-{shard}-")


def op_key_of(kind: str, op_id: str) -> str:
    return f"{kind}:{op_id}"
