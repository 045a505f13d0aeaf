"""What a route answers by itself, without the service: a problem, raised as ``HttpError``
(``validation`` for a 422), or a JSON value (``json_reply``)."""

from __future__ import annotations

from typing import Any

from balance.domain import errors as e
from balance.engine.replies import Reply
from balance.views import encoder


class HttpError(Exception):
    """Raised inside a handler to answer a problem at once."""

    def __init__(self, code: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.code, self.status, self.detail = code, status, detail


def validation(detail: str) -> HttpError:
    return HttpError(e.VALIDATION_ERROR, 422, detail)


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, encoder.encode(value))
