"""The domain names outcomes with codes; the API numbers them (issue 15 item 7)."""

from __future__ import annotations

import ast
import inspect

from balance.api import statuses
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.ledger import Ledger
from balance.domain.model import Account
from balance.engine.replies import render


def _codes() -> set[str]:
    return {value for name, value in vars(e).items() if name.isupper() and isinstance(value, str)}


def test_the_domain_errors_module_holds_no_status_number() -> None:
    tree = ast.parse(inspect.getsource(e))
    numbers = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and type(node.value) is int]
    assert numbers == []
    assert not hasattr(e.Rejection("x", "y"), "status")


def test_every_code_has_a_status_in_the_api() -> None:
    assert _codes() <= set(statuses.STATUS_BY_CODE)
    assert statuses.status_of(e.INSUFFICIENT_FUNDS) == 422
    assert statuses.status_of(e.IDEMPOTENCY_CONFLICT) == 409


def test_a_recorded_refusal_is_answered_recorded_and_journaled_with_the_api_status() -> None:
    ledger = Ledger(0)
    ledger.load_account(Account("A", None, "user", "EU", "USD", "A", "active", 0, 0, 0, False, 1, 0, 0, b"{}"))
    ledger.begin()
    command = c.Debit("A", "d1", 5)
    outcome = ledger.apply(command, 1)
    reply = render(command, outcome, 0)
    changes = ledger.collect()
    assert reply.status == 422 and b'"status":422' in reply.body
    assert [entry.status for entry in changes.entries] == [422]
    assert ledger.records[("A", "op:d1")].status == 422
