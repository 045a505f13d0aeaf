"""Reading a request: its JSON body into a schema, its path and query parameters, its API key.
Anything malformed is a 422 (``validation``), or a 404 for a hold id no hold can have."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import msgspec

from balance.api import schemas as s
from balance.api import strict_json
from balance.api.answers import HttpError, validation
from balance.domain import errors as e


def decode(body: bytes, type_: Any, decoder: msgspec.json.Decoder[Any] | None = None) -> Any:
    """``body`` as ``type_`` (or by ``decoder``), refused with a 422 if it means two things
    (a key twice, nesting too deep: ``strict_json``) or does not fit the schema."""
    # No body where one is optional is {}; a body of whitespace only is not JSON (422), as
    # anything else that is not (schemathesis sent a lone CR to a release, which released).
    if not body and type_ in (s.CaptureBody, s.ReleaseBody, s.AccountPatch, s.NewKey):
        body = b"{}"
    problem = strict_json.problem_of(body)
    if problem is not None:
        raise validation(problem)
    try:
        return msgspec.json.decode(body, type=type_) if decoder is None else decoder.decode(body)
    except msgspec.ValidationError as exc:
        exact = whole_numbers(body) if "got `float`" in str(exc) else None
        if exact is None:
            raise validation(str(exc)) from None
        try:  # 2500.0 or 2.5e3 where an integer belongs: the integer it is (as JSON Schema reads it)
            return msgspec.json.decode(exact, type=type_)
        except msgspec.ValidationError as again:
            raise validation(str(again)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets UnicodeDecodeError through
        raise validation(f"malformed JSON: {exc}") from None
    except RecursionError:  # not reached after the depth check; kept so that it can never be a 500
        raise validation(f"JSON nested deeper than {strict_json.DEPTH_MAX} levels") from None


INTEGER_FIELDS = (
    "amount",
    "credit_limit",
    "expires_in_s",
    "to_shard",
)  # the integer fields of bodies and batch operations
_EXACT = msgspec.json.Decoder(float_hook=Decimal)  # numbers with a fraction or exponent, read exactly
_EXACT_ENCODER = msgspec.json.Encoder(decimal_format="number")


def whole_numbers(body: bytes) -> bytes | None:
    """``body`` with each integer field written as a whole number with a fraction or an exponent
    (``2500.0``, ``2.5e3``) rewritten as that integer, exactly (decimal, never through a float);
    None when there is none. JSON Schema's ``integer`` is any number with a zero fraction, so the
    service accepts what the OpenAPI document allows. Only on the refusal path: the hot path
    decodes integers directly."""
    try:
        value = _EXACT.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    changed = False
    for name in INTEGER_FIELDS:
        number = value.get(name)
        if isinstance(number, Decimal) and number.is_finite() and number.adjusted() < 20:  # < 10^20: no huge int
            if number == number.to_integral_value():
                value[name] = int(number)
                changed = True
    return _EXACT_ENCODER.encode(value) if changed else None


def bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def hold_id(value: str) -> str:
    if value in DOT_IDS:
        raise validation(f"{value!r} is not an id")
    if _ID.fullmatch(value) is None:
        raise HttpError(e.HOLD_NOT_FOUND, 404, f"hold {value[:80]} not found")
    return value


ID_SHAPE = _ID = re.compile(s.ID_PATTERN)
DOT_IDS = (".", "..")  # path segments, not ids: refused wherever an id is accepted
SEQ_MAX = 2**63 - 1  # journal sequence numbers are BIGINT: a larger cursor cannot be bound


def int_query(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= int(raw) <= maximum:
        raise validation(f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


def time_query(query: dict[str, str], name: str) -> int | None:
    """An RFC 3339 date-time (``2026-12-06T20:00:00Z``, ``...+01:00``; the OpenAPI ``date-time``)
    as microseconds since the epoch (fractions past a microsecond are dropped, a leap second is
    the last microsecond of its minute)."""
    raw = query.get(name)
    if raw is None:
        return None
    moment = rfc3339_us(raw)
    if moment is None:
        raise validation(f"{name} must be an RFC 3339 date-time with a time zone, e.g. 2026-12-06T20:00:00Z")
    return moment


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def rfc3339_us(text: str) -> int | None:
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    leap_year = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= (28 + leap_year if month == 2 else _DAYS_IN_MONTH[month - 1]):
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    fraction = int((match.group(7) or "")[:6].ljust(6, "0"))
    if second == 60:
        second, fraction = 59, 999_999
    sign, offset_hours, offset_minutes = match.group(8), match.group(9), match.group(10)
    offset = 0
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            return None
        offset = (int(offset_hours) * 60 + int(offset_minutes)) * (1 if sign == "+" else -1)
    days = _days_from_civil(year, month, day)
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60
    return seconds * 1_000_000 + fraction


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm: no datetime,
    so year 0000, which RFC 3339 allows, works too)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468
