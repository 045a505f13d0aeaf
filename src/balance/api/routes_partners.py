"""Partner moves (docs/moves.md): a top-level partner and its subtree to another shard, and
where an account lives. Admin key only: a move is an operator's decision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from balance.api import schemas as s
from balance.api.answers import HttpError, json_reply
from balance.api.parsing import decode
from balance.api.statuses import status_of
from balance.domain import errors as e
from balance.engine.replies import Reply
from balance.service import ADMIN, MoveRefused
from balance.shards import shard_in_id

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


def _admin(request: Request) -> None:
    if request.principal != ADMIN:
        raise HttpError(e.FORBIDDEN, 403, "only the admin key may move partners or ask where they live")


async def move(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    _admin(request)
    body: s.MoveBody = decode(request.body, s.MoveBody)
    try:
        answer = await app.service.move_partner(params[0], body.to_shard)
    except MoveRefused as exc:
        raise HttpError(exc.code, status_of(exc.code), exc.detail) from None
    return json_reply(200, answer)


async def placement(app: BalanceApp, request: Request, params: list[str]) -> Reply:
    _admin(request)
    account_id = params[0]
    shard = app.service.placement.shard_of(account_id)
    if shard is None or app.service.account_state(account_id) is None:
        raise HttpError(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found")
    return json_reply(200, {"account_id": account_id, "shard": shard, "moved": shard != shard_in_id(account_id)})
