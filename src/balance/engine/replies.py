"""What the engine answers: a ``Reply`` per command (rendered from the ledger's ``Outcome``),
the ``Collector`` that gathers a batch request's replies behind one future, and the 503 of a
shard that cannot take commands (``Unavailable``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from balance import views
from balance.api.statuses import status_of
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain.outcomes import Outcome

RETRY_AFTER_S = 1  # what a 503 (or 429) tells the caller to wait


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~3x (one per operation)
class Reply:
    """An answer: HTTP status, encoded body, and whether it replays an earlier outcome."""

    status: int
    body: bytes
    replayed: bool = False


class Collector:
    """The replies of many commands behind ONE future (a batch request: no future per operation).

    A ``Slot`` stands in the queue where a single command's future would: it has the two
    methods the writer calls (``done`` and ``set_result``). The future resolves once every
    slot is answered.
    """

    __slots__ = ("replies", "remaining", "future")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.replies: list[Reply | None] = [None] * size
        self.remaining = size
        self.future: asyncio.Future[list[Reply | None]] = loop.create_future()

    def answer(self, index: int, reply: Reply) -> None:
        if self.replies[index] is None:
            self.replies[index] = reply
            self.remaining -= 1
            if self.remaining == 0 and not self.future.done():
                self.future.set_result(self.replies)


class Slot:
    __slots__ = ("collector", "index")

    def __init__(self, collector: Collector, index: int) -> None:
        self.collector, self.index = collector, index

    def done(self) -> bool:
        return self.collector.replies[self.index] is not None

    def set_result(self, reply: Reply) -> None:
        self.collector.answer(self.index, reply)


class Unavailable(Exception):
    """The shard cannot take commands now (recovering, overloaded, storage failing)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def unavailable_reply(detail: str) -> Reply:
    return Reply(503, views.problem(e.UNAVAILABLE, 503, detail))


def render(command: c.Command, outcome: Outcome, shard: int) -> Reply:
    """The answer of an applied command (``shard``: the one that applied it, named by the
    transaction id of its row)."""
    if outcome.replay is not None:
        return Reply(outcome.status, outcome.replay.body, True)
    if outcome.rejection is not None:
        # The domain names the refusal; its status is the API's (recorded with it for replays).
        outcome.status = status = status_of(outcome.rejection.code)
        if outcome.record is not None:
            outcome.record.status = status
        if outcome.entry is not None:
            outcome.entry.status = status
        body = views.encode_rejection(outcome.rejection)
    elif isinstance(command, (c.MoveOut, c.MoveIn)):
        body = outcome.record.body if outcome.record is not None else b""  # (``domain.moves``: the step's seq)
    elif isinstance(command, (c.CreateAccount, c.UpdateAccount)):
        body = views.encode_account(outcome.accounts[0])
    elif outcome.entry is not None and not isinstance(command, c.ExpireHold):
        body = views.encode_money_reply(outcome.entry, outcome.accounts, outcome.hold, shard)
    else:
        body = b""
    if outcome.record is not None:
        outcome.record.body = body
    if outcome.entry is not None and outcome.entry.op_key is not None:
        outcome.entry.result = body
    return Reply(outcome.status, body)
