"""The batch route: up to ``BATCH_OPERATIONS_MAX`` money operations in one request, each answered
on its own (a bad or forbidden one is refused alone)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from balance.api import schemas as s
from balance.api import strict_json
from balance.api.access import check_command
from balance.api.answers import HttpError, validation
from balance.api.commands import batch_command
from balance.api.parsing import decode
from balance.domain import commands as c
from balance.engine.replies import Reply
from balance.views import problem

if TYPE_CHECKING:
    from balance.api.app import BalanceApp, Request


_OUTER = msgspec.json.Decoder(s.BatchBody)
_OP = msgspec.json.Decoder(s.BatchOp)


def _operations(raw_body: bytes) -> tuple[list[bytes], set[int]]:
    """The operations of a batch body, each as its own bytes (checked one by one, so that a bad
    one fails alone), and the indices of those too deep for the decoder (replaced by null)."""
    too_deep: set[int] = set()
    try:
        body = _outer(raw_body)
    except RecursionError:
        raw_body, too_deep = strict_json.blank_deep_elements(raw_body)
        body = _outer(raw_body)
    elements = [bytes(raw) for raw in body.operations]
    problem = strict_json.skeleton_problem(raw_body, elements)
    if problem is not None:
        raise validation(problem)
    return elements, too_deep


def _outer(raw_body: bytes) -> s.BatchBody:
    """The batch's own shape (its operations kept as raw bytes: they are checked one by one)."""
    try:
        return _OUTER.decode(raw_body)
    except msgspec.ValidationError as exc:
        raise validation(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise validation(f"malformed JSON: {exc}") from None


async def batch(app: BalanceApp, request: Request, _: list[str]) -> Reply:
    """In a fleet, the operations on accounts of shards other nodes own are sent to those
    nodes (one batch per node, at the same time as this node runs its own share): every
    operation is answered in its place, each node's refusals as that node gives them."""
    elements, too_deep = _operations(request.body)
    results: list[Reply | None] = []
    commands: list[c.Command] = []
    positions: list[int] = []
    elsewhere: list[tuple[int, bytes]] = []  # (shard, the operation as sent) for other nodes
    elsewhere_positions: list[int] = []
    node = app.service.node
    for index, raw in enumerate(elements):
        try:
            if index in too_deep:
                raise validation(f"JSON nested deeper than {strict_json.DEPTH_MAX} levels")
            op = decode(raw, s.BatchOp, _OP)
            command = batch_command(op, request.actor)
            if (
                node is not None
                and (shard := node.batch_shard_elsewhere(command.account_id, request.headers)) is not None
            ):
                elsewhere_positions.append(len(results))
                results.append(None)
                elsewhere.append((shard, raw))  # that node checks the key's rights on its accounts
                continue
            check_command(app, request.actor, command)
        except HttpError as exc:
            results.append(Reply(exc.status, problem(exc.code, exc.status, exc.detail)))
            continue
        positions.append(len(results))
        results.append(None)
        commands.append(command)
    if elsewhere:
        assert node is not None
        # (two awaits, not gather: gather returns a list where its stub says tuple, and the
        # compiled module checks the type it was told)
        forwarded = asyncio.ensure_future(node.forward_batch(elsewhere, request.headers))
        try:
            here = await app.service.run_many(commands)
        except BaseException:
            forwarded.cancel()  # not left running with nobody to read its answer
            raise
        there = await forwarded
        for position, reply in zip(elsewhere_positions, there, strict=True):
            results[position] = reply
    else:
        here = await app.service.run_many(commands)
    for position, reply in zip(positions, here, strict=True):
        results[position] = reply
    parts = [
        b'{"status":%d,"replayed":%b,"body":%b}' % (r.status, b"true" if r.replayed else b"false", r.body)
        for r in results
        if r is not None
    ]
    return Reply(200, b'{"results":[' + b",".join(parts) + b"]}")
