"""The ASGI application: routing, auth, decoding, and answers as problem+json or JSON.

Raw ASGI with msgspec: a request costs tens of microseconds here instead of the ~100+ of a
framework (BENCHMARKS.md). Every route is listed in ``ROUTES`` and in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from prometheus_client import generate_latest

from balance import views
from balance.api import schemas as s
from balance.api.body import BODY_BYTES_MAX, read_body
from balance.api.openapi import openapi_document
from balance.domain import commands as c
from balance.domain import errors as e
from balance.domain import limits
from balance.domain.currencies import ISO_4217
from balance.domain.model import ACCOUNT_CURRENCY, ACCOUNT_REGION, JOURNAL_SEQ
from balance.engine.replies import RETRY_AFTER_S, Reply
from balance.service import ADMIN, BalanceService
from balance.views import encoder, problem

log = logging.getLogger("balance.api")

JSON = b"application/json"
PROBLEM = b"application/problem+json"


class HttpError(Exception):
    """Raised inside a handler to answer a problem at once."""

    def __init__(self, code: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.code, self.status, self.detail = code, status, detail


def validation(detail: str) -> HttpError:
    return HttpError(e.VALIDATION_ERROR, 422, detail)


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "principal")

    def __init__(self, method: str, path: str, query: dict[str, str], headers: dict[bytes, bytes], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body
        self.principal: str = ""


Handler = Callable[[Request, list[str]], Awaitable[Reply]]


def decode(body: bytes, type_: Any) -> Any:
    if not body.strip() and type_ in (s.CaptureBody, s.ReleaseBody, s.AccountPatch):
        body = b"{}"
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise validation(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec lets UnicodeDecodeError through
        raise validation(f"malformed JSON: {exc}") from None


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    raw = s.canonical_metadata(metadata)
    if len(raw) > limits.METADATA_BYTES_MAX:
        raise validation(f"metadata is larger than {limits.METADATA_BYTES_MAX} bytes")
    return raw


def check_currency(currency: str) -> None:
    if currency not in ISO_4217:
        raise validation(f"{currency} is not an ISO 4217 currency code")


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, encoder.encode(value))


class BalanceApp:
    """ASGI 3 application over a BalanceService."""

    def __init__(self, service: BalanceService, *, start_service: bool = True) -> None:
        self.service = service
        self.metrics = service.engines[0].metrics
        self._start_service = start_service
        self._startup: asyncio.Task[None] | None = None
        self._openapi = encoder.encode(openapi_document())
        self._latency: dict[str, Any] = {}  # route -> its bound histogram (labels() costs a lookup)
        self._routes: dict[int, list[tuple[str, tuple[str, ...], Handler, str]]] = {}
        for method, pattern, handler in self._route_table():
            parts = tuple(pattern.strip("/").split("/"))
            self._routes.setdefault(len(parts), []).append((method, parts, handler, pattern))

    def _route_table(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/accounts", self.create_account),
            ("GET", "/v1/accounts/{id}", self.get_account),
            ("PATCH", "/v1/accounts/{id}", self.patch_account),
            ("GET", "/v1/accounts/{id}/children", self.children),
            ("POST", "/v1/accounts/{id}/keys", self.create_key),
            ("POST", "/v1/accounts/{id}/credits", self.credit),
            ("POST", "/v1/accounts/{id}/debits", self.debit),
            ("POST", "/v1/accounts/{id}/holds", self.hold),
            ("GET", "/v1/accounts/{id}/holds/{hold_id}", self.get_hold),
            ("POST", "/v1/accounts/{id}/holds/{hold_id}/capture", self.capture),
            ("POST", "/v1/accounts/{id}/holds/{hold_id}/release", self.release),
            ("GET", "/v1/accounts/{id}/transactions", self.transactions),
            ("POST", "/v1/transfers", self.transfer),
            ("POST", "/v1/batch", self.batch),
        ]

    # ---- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        status, headers, payload = await self.serve(
            scope["method"], scope["path"], scope["query_string"], dict(scope["headers"]), body
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def serve(
        self, method: str, path: str, raw_query: bytes, headers: dict[bytes, bytes], body: bytes | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request, whoever carried it (ASGI here, or the built-in HTTP server).

        ``body`` is None when it was larger than BODY_BYTES_MAX (answered 422).
        """
        started = time.perf_counter()
        route = "unmatched"
        try:
            route, reply, extra = await self._handle(method, path, raw_query, headers, body)
        except Exception:  # a bug: log it, answer 500, keep serving
            log.exception("unhandled error")
            reply, extra = Reply(500, problem("internal_error", 500, "internal error")), []
        if any(name == b"content-type" for name, _ in extra):  # e.g. /metrics: one Content-Type, not two
            response_headers = list(extra)
        else:
            response_headers = [(b"content-type", PROBLEM if reply.status >= 400 else JSON), *extra]
        if reply.replayed:
            response_headers.append((b"idempotent-replayed", b"true"))
        if reply.status == 503 or reply.status == 429:
            response_headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = self.metrics.request_seconds.labels(route)
        histogram.observe(time.perf_counter() - started)
        return reply.status, response_headers, reply.body

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._start_service:
                    # Recovery runs in the background: /healthz answers and /readyz says 503 meanwhile.
                    self._startup = asyncio.create_task(self.start_service())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._startup is not None and not self._startup.done():
                    self._startup.cancel()
                await self.service.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start_service(self) -> None:
        """Recover the shards (run in the background: the HTTP server answers meanwhile)."""
        try:
            await self.service.start()
        except Exception:
            log.critical("recovery failed; the service stays unready", exc_info=True)
            raise

    async def _handle(
        self, method: str, path: str, raw_query: bytes, headers: dict[bytes, bytes], body: bytes | None
    ) -> tuple[str, Reply, list[tuple[bytes, bytes]]]:
        if path == "/healthz":
            return path, json_reply(200, {"status": "ok"}), []
        if path == "/readyz":
            ready = self.service.ready
            shards = {str(engine.shard): engine.state for engine in self.service.engines}
            if ready:
                return path, json_reply(200, {"ready": ready, "shards": shards}), []
            # A 503 goes out as problem+json, so the body is a problem (with the shard states as extensions).
            detail = "not every shard has recovered"
            document = {**msgspec.json.decode(problem(e.UNAVAILABLE, 503, detail)), "ready": ready, "shards": shards}
            return path, json_reply(503, document), []
        if path == "/metrics":
            return (
                path,
                Reply(200, generate_latest(self.metrics.registry)),
                [(b"content-type", b"text/plain; version=0.0.4")],
            )
        if path == "/openapi.json":
            return path, Reply(200, self._openapi), []
        parts = path.strip("/").split("/")
        handler, pattern, params = self._match(method, parts)
        if handler is None:
            status, code = (405, "method_not_allowed") if pattern else (404, "not_found")
            return "unmatched", Reply(status, problem(code, status, f"{method} {path} is not a route")), []
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {}
        request = Request(method, path, query, headers, b"" if body is None else body)  # None: too large, 400 below
        try:
            if not self.service.ready:  # first: partner keys are only known once recovery has loaded them
                raise HttpError(e.UNAVAILABLE, 503, "the service is recovering; retry shortly")
            principal = self.service.principal(_bearer(headers))
            if principal is None:
                raise HttpError(e.UNAUTHORIZED, 401, "missing or unknown API key")
            if body is None:
                raise validation(f"body larger than {BODY_BYTES_MAX} bytes")
            request.principal = principal
            reply = await handler(request, params)
        except HttpError as exc:
            reply = Reply(exc.status, problem(exc.code, exc.status, exc.detail))
        extra = [(b"www-authenticate", b"Bearer")] if reply.status == 401 else []
        return pattern, reply, extra

    def _match(self, method: str, parts: list[str]) -> tuple[Handler | None, str, list[str]]:
        allowed = ""
        for route_method, route_parts, handler, pattern in self._routes.get(len(parts), ()):
            params = []
            for want, got in zip(route_parts, parts, strict=True):
                if want.startswith("{"):
                    params.append(got)
                elif want != got:
                    break
            else:
                if route_method == method:
                    return handler, pattern, params
                allowed = pattern
        return None, allowed, []

    # ---- auth helpers --------------------------------------------------------------------

    def _require_account(self, request: Request, account_id: str) -> tuple:  # type: ignore[type-arg]
        """The committed account, if the caller may act on it (403 before 404 for partners)."""
        if not self.service.may_act_on(request.principal, account_id):
            raise HttpError(e.FORBIDDEN, 403, f"this key may not act on account {account_id}")
        state = self.service.account_state(account_id)
        if state is None:
            raise HttpError(e.ACCOUNT_NOT_FOUND, 404, f"account {account_id} not found")
        return state

    def _require_ancestor(self, request: Request, account_id: str) -> tuple:  # type: ignore[type-arg]
        """Admin, or a key of a strict ancestor (a partner cannot raise its own limit or keys)."""
        state = self._require_account(request, account_id)
        if request.principal != ADMIN and request.principal == account_id:
            raise HttpError(e.FORBIDDEN, 403, "only an ancestor's key or the admin key may do this")
        return state

    def _check_access(self, principal: str, *account_ids: str | None) -> None:
        for account_id in account_ids:
            if account_id is not None and not self.service.may_act_on(principal, account_id):
                raise HttpError(e.FORBIDDEN, 403, f"this key may not act on account {account_id}")

    # ---- accounts ------------------------------------------------------------------------

    async def create_account(self, request: Request, _: list[str]) -> Reply:
        body: s.NewAccount = decode(request.body, s.NewAccount)
        if body.parent_id is None:
            if request.principal != ADMIN:
                raise HttpError(e.FORBIDDEN, 403, "only the admin key may create top-level accounts")
            if body.currency is None or body.region is None:
                raise validation("a top-level account needs a region and a currency")
            region, currency = body.region, body.currency
        else:
            parent = self._require_account(request, body.parent_id)
            region, currency = body.region or parent[ACCOUNT_REGION], body.currency or parent[ACCOUNT_CURRENCY]
        check_currency(currency)
        command = c.CreateAccount(
            "", body.parent_id, body.kind, region, currency, body.name, body.credit_limit, metadata_bytes(body.metadata)
        )
        return await self.service.create_account(command)

    async def get_account(self, request: Request, params: list[str]) -> Reply:
        return json_reply(200, views.account_view(self._require_account(request, params[0])))

    async def patch_account(self, request: Request, params: list[str]) -> Reply:
        self._require_ancestor(request, params[0])
        body: s.AccountPatch = decode(request.body, s.AccountPatch)
        unset = msgspec.UNSET
        command = c.UpdateAccount(
            params[0],
            status=None if body.status is unset else body.status,
            name=None if body.name is unset else body.name,
            metadata=None if body.metadata is unset else metadata_bytes(body.metadata),
            credit_limit=None if body.credit_limit is unset else body.credit_limit,
        )
        return await self.service.execute(command)

    async def children(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        limit = _int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.CHILDREN_LIMIT_MAX)
        cursor = request.query.get("cursor") or None
        engine = self.service.engine_for(params[0])
        assert engine is not None
        ids = await engine.storage.children(params[0], limit, cursor)
        data = [views.account_view(state) for i in ids if (state := engine.account_state(i)) is not None]
        next_cursor = ids[-1] if len(ids) == limit else None
        return json_reply(200, {"data": data, "next_cursor": next_cursor})

    async def create_key(self, request: Request, params: list[str]) -> Reply:
        self._require_ancestor(request, params[0])
        reply, _ = await self.service.create_key(params[0])
        return reply

    # ---- money ---------------------------------------------------------------------------

    async def credit(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        body: s.CreditBody = decode(request.body, s.CreditBody)
        return await self.service.execute(credit_command(params[0], body))

    async def debit(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        body: s.DebitBody = decode(request.body, s.DebitBody)
        return await self.service.execute(debit_command(params[0], body))

    async def transfer(self, request: Request, _: list[str]) -> Reply:
        body: s.TransferBody = decode(request.body, s.TransferBody)
        self._check_access(request.principal, body.from_account_id, body.to_account_id)
        return await self.service.execute(transfer_command(body))

    async def hold(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        body: s.HoldBody = decode(request.body, s.HoldBody)
        self._check_access(request.principal, body.destination_account_id)
        return await self.service.execute(hold_command(params[0], body))

    async def capture(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        body: s.CaptureBody = decode(request.body, s.CaptureBody)
        return await self.service.execute(c.CaptureHold(params[0], _hold_id(params[1]), body.amount))

    async def release(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        decode(request.body, s.ReleaseBody)
        return await self.service.execute(c.ReleaseHold(params[0], _hold_id(params[1])))

    async def get_hold(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        engine = self.service.engine_for(params[0])
        assert engine is not None
        state = await engine.hold_state(params[0], _hold_id(params[1]))
        if state is None:
            raise HttpError(e.HOLD_NOT_FOUND, 404, f"hold {params[1]} not found")
        return json_reply(200, views.hold_view(state))

    async def transactions(self, request: Request, params: list[str]) -> Reply:
        self._require_account(request, params[0])
        limit = _int_query(request.query, "limit", limits.HISTORY_LIMIT_DEFAULT, limits.HISTORY_LIMIT_MAX)
        cursor = request.query.get("cursor") or None
        before_seq = None
        if cursor is not None:
            if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19 or int(cursor) > _SEQ_MAX:
                raise validation("cursor is not one this service gave out")
            before_seq = int(cursor)
        since, until = _time_query(request.query, "since"), _time_query(request.query, "until")
        engine = self.service.engine_for(params[0])
        assert engine is not None
        rows = await engine.storage.history(params[0], limit, before_seq, since, until)
        next_cursor = str(rows[-1][JOURNAL_SEQ]) if len(rows) == limit else None
        return json_reply(200, {"data": [views.txn_view(row) for row in rows], "next_cursor": next_cursor})

    async def batch(self, request: Request, _: list[str]) -> Reply:
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
                command = batch_command(op)
                self._check_access(request.principal, *_accounts_of(command))
            except HttpError as exc:
                results.append(Reply(exc.status, problem(exc.code, exc.status, exc.detail)))
                continue
            positions.append(len(results))
            results.append(None)
            commands.append(command)
        for position, reply in zip(positions, await self.service.run_many(commands), strict=True):
            results[position] = reply
        parts = [b'{"status":%d,"body":%b}' % (r.status, r.body) for r in results if r is not None]
        return Reply(200, b'{"results":[' + b",".join(parts) + b"]}")


# ---- body -> command -------------------------------------------------------------------


def credit_command(account_id: str, body: s.CreditBody) -> c.Credit:
    return c.Credit(account_id, body.id, body.amount, body.description, metadata_bytes(body.metadata))


def debit_command(account_id: str, body: s.CreditBody) -> c.Debit:
    return c.Debit(account_id, body.id, body.amount, body.description, metadata_bytes(body.metadata))


def transfer_command(body: s.TransferBody) -> c.Transfer:
    check_currency(body.currency)
    return c.Transfer(
        body.id, body.from_account_id, body.to_account_id, body.amount, body.currency,
        body.description, metadata_bytes(body.metadata),
    )  # fmt: skip


def hold_command(account_id: str, body: s.HoldBody) -> c.PlaceHold:
    return c.PlaceHold(
        account_id, body.id, body.amount, body.expires_in_s, body.destination_account_id,
        body.description, metadata_bytes(body.metadata),
    )  # fmt: skip


def batch_command(op: s.BatchOp) -> c.Command:
    if isinstance(op, s.CreditOp):
        return credit_command(op.account_id, op)
    if isinstance(op, s.DebitOp):
        return debit_command(op.account_id, op)
    if isinstance(op, s.TransferOp):
        return transfer_command(op)
    if isinstance(op, s.HoldOp):
        return hold_command(op.account_id, op)
    if isinstance(op, s.CaptureOp):
        return c.CaptureHold(op.account_id, op.hold_id, op.amount)
    return c.ReleaseHold(op.account_id, op.hold_id)


def _accounts_of(command: c.Command) -> tuple[str | None, ...]:
    if isinstance(command, c.Transfer):
        return command.from_account_id, command.to_account_id
    if isinstance(command, c.PlaceHold):
        return command.account_id, command.destination_account_id
    return (command.account_id,)


# ---- small parsers ---------------------------------------------------------------------


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _hold_id(value: str) -> str:
    if _ID.fullmatch(value) is None:
        raise HttpError(e.HOLD_NOT_FOUND, 404, f"hold {value[:80]} not found")
    return value


_ID = re.compile(s.ID_PATTERN)
_SEQ_MAX = 2**63 - 1  # journal sequence numbers are BIGINT: a larger cursor cannot be bound


def _int_query(query: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= int(raw) <= maximum:
        raise validation(f"{name} must be an integer from 1 to {maximum}")
    return int(raw)


def _time_query(query: dict[str, str], name: str) -> int | None:
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
