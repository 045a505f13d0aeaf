"""The batch route: up to ``BATCH_OPERATIONS_MAX`` money operations in one request, each answered
on its own (a bad or forbidden one is refused alone)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from balance.api import schemas as s
from balance.api.access import check_command
from balance.api.answers import HttpError, validation
from balance.api.commands import batch_command
from balance.api.parsing import decode
from balance.domain import commands as c
from balance.engine.replies import Reply
from balance.views import problem

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


async def batch(app: BalanceApp, request: Request, _: list[str]) -> Reply:
    body: s.BatchBody = decode(request.body, s.BatchBody)
    decoder = msgspec.json.Decoder(s.BatchOp)
    results: list[Reply | None] = []
    commands: list[c.Command] = []
    positions: list[int] = []
    for raw in body.operations:
        try:
            try:
                op = decoder.decode(raw)
            except msgspec.ValidationError as exc:
                raise validation(str(exc)) from None
            except UnicodeDecodeError as exc:  # msgspec.Raw keeps invalid UTF-8 until decoded
                raise validation(f"malformed JSON: {exc}") from None
            command = batch_command(op, request.actor)
            check_command(app, request.actor, command)
        except HttpError as exc:
            results.append(Reply(exc.status, problem(exc.code, exc.status, exc.detail)))
            continue
        positions.append(len(results))
        results.append(None)
        commands.append(command)
    for position, reply in zip(positions, await app.service.run_many(commands), strict=True):
        results[position] = reply
    parts = [b'{"status":%d,"body":%b}' % (r.status, r.body) for r in results if r is not None]
    return Reply(200, b'{"results":[' + b",".join(parts) + b"]}")
