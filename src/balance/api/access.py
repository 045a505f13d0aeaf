"""Who may act on what: the checks a route makes on the API key before it reads or changes an account."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.api.answers import HttpError
from balance.domain import errors as e
from balance.service import ADMIN

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


def require_account(app: BalanceApp, request: Request, account_id: str) -> tuple:  # type: ignore[type-arg]
    """The committed account, if the caller may act on it (403 before 404 for partners)."""
    if not app.service.may_act_on(request.principal, account_id):
        raise HttpError(e.FORBIDDEN, 403, f"this key may not act on account {account_id}")
    state = app.service.account_state(account_id)
    if state is None:
        raise HttpError(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found")
    return state


def require_ancestor(app: BalanceApp, request: Request, account_id: str) -> tuple:  # type: ignore[type-arg]
    """Admin, or a key of a strict ancestor (a partner cannot raise its own limit or keys)."""
    state = require_account(app, request, account_id)
    if request.principal != ADMIN and request.principal == account_id:
        raise HttpError(e.FORBIDDEN, 403, "only an ancestor's key or the admin key may do this")
    return state


def check_access(app: BalanceApp, principal: str, *account_ids: str | None) -> None:
    for account_id in account_ids:
        if account_id is not None and not app.service.may_act_on(principal, account_id):
            raise HttpError(e.FORBIDDEN, 403, f"this key may not act on account {account_id}")
