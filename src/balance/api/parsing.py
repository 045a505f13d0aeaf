"""Reading a request: its JSON body into a schema, its path and query parameters, its API key.
Anything malformed is a 422 (``validation``), or a 404 for a hold id no hold can have."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from balance import views
from balance.api import schemas as s
from balance.api.answers import HttpError, validation
from balance.domain import errors as e


def decode(body: bytes, type_: Any) -> Any:
    if not body.strip() and type_ in (s.CaptureBody, s.ReleaseBody, s.AccountPatch, s.NewKey):
        body = b"{}"
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise validation(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets UnicodeDecodeError through
        raise validation(f"malformed JSON: {exc}") from None


def bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def hold_id(value: str) -> str:
    if _ID.fullmatch(value) is None:
        raise HttpError(e.HOLD_NOT_FOUND, 404, f"hold {value[:80]} not found")
    return value


_ID = re.compile(s.ID_PATTERN)
SEQ_MAX = 2**63 - 1  # journal sequence numbers are BIGINT: a larger cursor cannot be bound


def int_query(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= int(raw) <= maximum:
        raise validation(f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


def time_query(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise validation(f"{name} must be an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise validation(f"{name} must carry a time zone (e.g. Z)")
    delta = moment - views._EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
