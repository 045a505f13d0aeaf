"""Account routes: open an account (top-level or a child), read it, change it, list its children,
give it an API key. Route handlers take (app, request, path params); ``app.py`` binds them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from balance import views
from balance.api import schemas as s
from balance.api.access import forbidden, require, require_account
from balance.api.answers import HttpError, json_reply, validation
from balance.api.commands import check_currency, metadata_bytes
from balance.api.parsing import ID_SHAPE, decode, int_query
from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.model import ACCOUNT_CURRENCY, ACCOUNT_REGION
from balance.engine.replies import Reply
from balance.service import ADMIN

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def create_account(app: BalanceApp, request: Request, _: list[str]) -> Reply:
    body: s.NewAccount = decode(request.body, s.NewAccount)
    if body.parent_id is None:
        if request.principal != ADMIN:
            raise HttpError(e.FORBIDDEN, 403, "only the admin key may create top-level accounts")
        if body.currency is None or body.region is None:
            raise validation("a top-level account needs a region and a currency")
        region, currency = body.region, body.currency
    else:
        parent = require(app, request, body.parent_id, a.may_open_child)
        if body.credit_limit and not a.may_set_credit_limit(request.actor, ("", *app.service.chain(body.parent_id))):
            raise forbidden("a credit limit needs a key with the limits scope above the account")
        region, currency = body.region or parent[ACCOUNT_REGION], body.currency or parent[ACCOUNT_CURRENCY]
    check_currency(currency)
    command = c.CreateAccount(
        "",
        body.parent_id,
        body.kind,
        region,
        currency,
        body.name,
        body.credit_limit,
        metadata_bytes(body.metadata),
        body.client_id,
    )
    return await app.service.create_account(command)


async def get_account(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    return json_reply(200, views.account_view(require_account(app, request, params[0])))


async def patch_account(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_manage_account)  # the ledger checks limits and freezes too
    body: s.AccountPatch = decode(request.body, s.AccountPatch)
    unset = msgspec.UNSET
    command = c.UpdateAccount(
        params[0],
        status=None if body.status is unset else body.status,
        name=None if body.name is unset else body.name,
        metadata=None if body.metadata is unset else metadata_bytes(body.metadata),
        credit_limit=None if body.credit_limit is unset else body.credit_limit,
        actor=request.actor,
    )
    return await app.service.execute(command)


async def children(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require_account(app, request, params[0])
    limit = int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.CHILDREN_LIMIT_MAX)
    cursor = request.query.get("cursor")
    if cursor is not None and ID_SHAPE.fullmatch(cursor) is None:  # a child's id, as the last page ended
        raise validation("cursor is not one this service gave out")
    port = app.service.port_for(params[0])
    assert port is not None
    ids = await port.children(params[0], limit, cursor)
    data = [views.account_view(state) for i in ids if (state := port.account_state(i)) is not None]
    next_cursor = ids[-1] if len(ids) == limit else None
    return json_reply(200, {"data": data, "next_cursor": next_cursor})


async def create_key(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_manage_keys)
    body: s.NewKey = decode(request.body, s.NewKey)
    actor = request.actor
    if body.scopes is None:
        scopes = a.default_scopes(actor)
    else:
        parsed = a.parse_scopes(body.scopes)
        if parsed is None or parsed == 0:
            raise validation(f"scopes must be a non-empty list of {', '.join(a.SCOPE_NAMES)}")
        scopes = parsed
    if not a.grantable(actor, scopes):
        raise forbidden("a key cannot be wider than the key creating it; funds, limits, platform: admin only")
    reply, _ = await app.service.create_key(params[0], scopes, body.client_id)
    return reply


async def list_keys(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_list_keys)
    return json_reply(200, {"data": app.service.list_keys(params[0])})


async def revoke_key(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_revoke_key)
    return await app.service.revoke_key(params[0], params[1])
