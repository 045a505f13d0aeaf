"""Money routes: credit, debit, and a transfer between two accounts (on one shard or across two)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.api import schemas as s
from balance.api.access import check_access, require_account
from balance.api.commands import credit_command, debit_command, transfer_command
from balance.api.parsing import decode
from balance.engine.replies import Reply

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def credit(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    body: s.CreditBody = decode(request.body, s.CreditBody)
    return await app.service.execute(credit_command(params[0], body))


async def debit(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    body: s.DebitBody = decode(request.body, s.DebitBody)
    return await app.service.execute(debit_command(params[0], body))


async def transfer(app: BalanceApp, request: Request, _: list[str]) -> Reply:
    body: s.TransferBody = decode(request.body, s.TransferBody)
    check_access(app, request.principal, body.from_account_id, body.to_account_id)
    return await app.service.execute(transfer_command(body))
