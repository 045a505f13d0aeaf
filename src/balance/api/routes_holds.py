"""Hold routes: place a hold, capture or release it, read it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.api import schemas as s
from balance.api.access import check, require, require_account
from balance.api.answers import HttpError, json_reply
from balance.api.commands import hold_command
from balance.api.parsing import decode, hold_id
from balance.domain import authority as a
from balance.domain import commands as c
from balance.domain import errors as e
from balance.engine.replies import Reply

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def hold(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_move)
    body: s.HoldBody = decode(request.body, s.HoldBody)
    check(app, request.actor, a.may_move, body.destination_account_id)
    return await app.service.execute(hold_command(params[0], body, request.actor))


async def capture(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_move)  # and the hold's rule: who placed it (domain)
    body: s.CaptureBody = decode(request.body, s.CaptureBody)
    return await app.service.execute(c.CaptureHold(params[0], hold_id(params[1]), body.amount, request.actor))


async def release(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    require(app, request, params[0], a.may_move)
    decode(request.body, s.ReleaseBody)
    return await app.service.execute(c.ReleaseHold(params[0], hold_id(params[1]), request.actor))


async def get_hold(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    """The hold as it stands: where its account lives, or, for a hold that left that shard with
    its account (``moved`` there) or was settled before a move, where it ended
    (``BalanceService.hold_read``)."""
    require_account(app, request, params[0])
    view = await app.service.hold_read(params[0], hold_id(params[1]))
    if isinstance(view, Reply):
        return view
    if view is None:
        raise HttpError(e.HOLD_NOT_FOUND, 404, f"hold {params[1]} not found")
    return json_reply(200, view)
