"""Who may act on what: the checks a route makes before it reads or changes an account.

The rules themselves are ``balance.domain.authority``'s (pure); here they get the account's
chain of ancestors from the service and become 403 ``forbidden`` answers. A partner asking
about an account outside its subtree gets 403 before 404 (it learns nothing of other trees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from balance.api.answers import HttpError
from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request

Rule = Callable[[a.Actor, tuple[str, ...]], bool]


def forbidden(detail: str) -> HttpError:
    return HttpError(e.FORBIDDEN, 403, detail)


def require(app: BalanceApp, request: Request, account_id: str, rule: Rule = a.may_read) -> tuple:  # type: ignore[type-arg]
    """The committed account, if ``rule`` lets the request's key act on it. (Every rule lets
    the admin act: its chain is not walked.)"""
    actor = request.actor
    if actor is not a.ADMIN_ACTOR and not rule(actor, app.service.chain(account_id)):
        raise forbidden(f"this key may not do this on account {account_id}")
    state = app.service.account_state(account_id)
    if state is None:
        raise HttpError(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found")
    return state


def require_account(app: BalanceApp, request: Request, account_id: str) -> tuple:  # type: ignore[type-arg]
    """The committed account, if the key may read it."""
    return require(app, request, account_id, a.may_read)


def check(app: BalanceApp, actor: a.Actor, rule: Rule, *account_ids: str | None) -> None:
    if actor is a.ADMIN_ACTOR:
        return
    for account_id in account_ids:
        if account_id is not None and not rule(actor, app.service.chain(account_id)):
            raise forbidden(f"this key may not do this on account {account_id}")


def check_command(app: BalanceApp, actor: a.Actor, command: c.Command) -> None:
    """A money command's accounts: credits and debits need ``funds``, the rest ``move`` (each end)."""
    if isinstance(command, (c.Credit, c.Debit)):
        check(app, actor, a.may_move_funds, command.account_id)
    elif isinstance(command, c.Transfer):
        check(app, actor, a.may_move, command.from_account_id, command.to_account_id)
    elif isinstance(command, c.PlaceHold):
        check(app, actor, a.may_move, command.account_id, command.destination_account_id)
    else:
        check(app, actor, a.may_move, command.account_id)
