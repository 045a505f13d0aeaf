"""Money routes: credit, debit, and a transfer between two accounts (on one shard or across two)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.api import schemas as s
from balance.api.access import check, require
from balance.api.commands import credit_command, debit_command, transfer_command
from balance.api.parsing import decode
from balance.domain import authority as a
from balance.engine.replies import Reply

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def credit(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_move_funds)  # money from outside: the funds scope
    body: s.CreditBody = decode(request.body, s.CreditBody)
    return await app.service.execute(credit_command(params[0], body))


async def debit(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_move_funds)
    body: s.DebitBody = decode(request.body, s.DebitBody)
    return await app.service.execute(debit_command(params[0], body))


async def transfer(app: BalanceApp, request: Request, _: list[str]) -> Reply:
    body: s.TransferBody = decode(request.body, s.TransferBody)
    check(app, request.actor, a.may_move, body.from_account_id, body.to_account_id)
    return await app.service.execute(transfer_command(body))
