"""The ASGI application: routing, auth, decoding, and answers as problem+json or JSON.

The route handlers live by concept in ``routes_*.py`` (functions of the app, the request and
the path parameters); the route table here binds them to methods and paths. Raw ASGI with msgspec: a request costs tens of microseconds here instead of the ~100+ of a
framework (BENCHMARKS.md). Every route is listed in ``ROUTES`` and in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from prometheus_client import generate_latest

from balance.api import (
    routes_accounts,
    routes_batch,
    routes_events,
    routes_history,
    routes_holds,
    routes_money,
    routes_partners,
)
from balance.api.admission import Admission, HttpLimits
from balance.api.answers import HttpError, json_reply, validation
from balance.api.body import BODY_BYTES_MAX, read_body
from balance.api.openapi import openapi_document
from balance.api.parsing import bearer
from balance.domain import errors as e
from balance.domain.authority import NOBODY, Actor
from balance.engine.replies import RETRY_AFTER_S, Reply
from balance.metrics import Metrics
from balance.relay.feed import EventsFeed
from balance.service import BalanceService
from balance.views import encoder, problem

log = logging.getLogger("balance.api")

JSON = b"application/json"
PROBLEM = b"application/problem+json"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
_WITH_BODY = ("POST", "PATCH", "PUT")
# What an API refusal (a problem answered before the engine) counts as in balance_operations.
_KIND_OF_ROUTE = {
    "/v1/accounts": "create_account", "/v1/accounts/{id}/keys": "create_key",
    "/v1/accounts/{id}/credits": "credit", "/v1/accounts/{id}/debits": "debit", "/v1/transfers": "transfer",
    "/v1/accounts/{id}/holds": "hold", "/v1/accounts/{id}/holds/{hold_id}/capture": "capture",
    "/v1/accounts/{id}/holds/{hold_id}/release": "release", "/v1/batch": "batch",
}  # fmt: skip
_ACCOUNT_ROUTE = "/v1/accounts/{id}"
_PARTNER_ROUTE = "/v1/partners/{id}"  # a partner move runs on the node owning the partner's shard


def _source_of(pattern: str, body: bytes) -> str | None:
    """A transfer's source account (the account of ``POST /v1/transfers``), if the body names one."""
    if pattern != "/v1/transfers":
        return None
    try:
        fields = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    source = fields.get("from_account_id") if isinstance(fields, dict) else None
    return source if isinstance(source, str) else None


def _moved_elsewhere(reply: Reply) -> bool:
    return b'"account_moving"' in reply.body or b'"account_moved"' in reply.body


# the routes of one account (its id the first parameter)
_INTERNAL = "/internal/"  # a fleet's node-to-node routes (balance.node.keeper.ShardKeeper.internal)
_BODY_ACCOUNT_ROUTES = ("/v1/accounts", "/v1/transfers")  # POST routes whose account is in the body


def json_media_type(content_type: bytes) -> bool:
    """``application/json``, with any parameters (a charset); what a JSON body may be sent as."""
    if content_type == JSON:
        return True
    return content_type.split(b";", 1)[0].strip().lower() == JSON


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "principal", "actor")

    def __init__(self, method: str, path: str, query: dict[str, str], headers: dict[bytes, bytes], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body
        self.principal: str = ""
        self.actor: Actor = NOBODY


Handler = Callable[["BalanceApp", Request, list[str]], Awaitable[Reply]]


def route_table() -> list[tuple[str, str, Handler]]:
    """Every route the app serves: (method, pattern, handler); the OpenAPI test reads it too."""
    return [
        ("POST", "/v1/accounts", routes_accounts.create_account),
        ("GET", "/v1/accounts/{id}", routes_accounts.get_account),
        ("PATCH", "/v1/accounts/{id}", routes_accounts.patch_account),
        ("GET", "/v1/accounts/{id}/children", routes_accounts.children),
        ("POST", "/v1/accounts/{id}/keys", routes_accounts.create_key),
        ("GET", "/v1/accounts/{id}/keys", routes_accounts.list_keys),
        ("DELETE", "/v1/accounts/{id}/keys/{key_id}", routes_accounts.revoke_key),
        ("POST", "/v1/accounts/{id}/credits", routes_money.credit),
        ("POST", "/v1/accounts/{id}/debits", routes_money.debit),
        ("POST", "/v1/accounts/{id}/holds", routes_holds.hold),
        ("GET", "/v1/accounts/{id}/holds/{hold_id}", routes_holds.get_hold),
        ("POST", "/v1/accounts/{id}/holds/{hold_id}/capture", routes_holds.capture),
        ("POST", "/v1/accounts/{id}/holds/{hold_id}/release", routes_holds.release),
        ("GET", "/v1/accounts/{id}/transactions", routes_history.transactions),
        ("GET", "/v1/accounts/{id}/transactions/{txn_id}", routes_history.transaction),
        ("POST", "/v1/partners/{id}/move", routes_partners.move),
        ("GET", "/v1/partners/{id}/placement", routes_partners.placement),
        ("GET", "/v1/events", routes_events.events),
        ("POST", "/v1/transfers", routes_money.transfer),
        ("POST", "/v1/batch", routes_batch.batch),
    ]


class BalanceApp:
    """ASGI 3 application over a BalanceService."""

    def __init__(
        self, service: BalanceService, metrics: Metrics, *, start_service: bool = True, events: EventsFeed | None = None
    ) -> None:
        self.service = service
        self.metrics = metrics  # injected (bootstrap): the registry /metrics serves, shared with the engines
        self._start_service = start_service
        self._startup: asyncio.Task[None] | None = None
        self._openapi = encoder.encode(openapi_document())
        self._refusals: dict[tuple[str, str], Any] = {}  # (kind, code) -> its bound counter
        self._latency: dict[str, Any] = {}  # route -> its bound histogram (labels() costs a lookup)
        self._routes: dict[int, list[tuple[str, tuple[str, ...], Handler, str]]] = {}
        self._events_feed = events  # GET /v1/events
        self._pruner: asyncio.Task[None] | None = None  # no broker: the feed prunes the outbox
        for method, pattern, handler in route_table():
            parts = tuple(pattern.strip("/").split("/"))
            self._routes.setdefault(len(parts), []).append((method, parts, handler, pattern))

    def events_feed(self) -> EventsFeed:
        """The event feed's readers of the shard databases (``bootstrap.events_feed``)."""
        if self._events_feed is None:
            raise HttpError(e.UNAVAILABLE, 503, "the event feed is not configured in this process")
        return self._events_feed

    async def close(self) -> None:
        """What the app holds besides the service: the event feed's connections."""
        feed, self._events_feed = self._events_feed, None
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        if feed is not None:
            await feed.close()

    def admission(self, limits: HttpLimits | None = None) -> Admission:
        """What the built-in server asks before it reads a body: the key, and readiness."""
        service = self.service

        def authenticate(headers: dict[bytes, bytes]) -> Actor | None:
            actor = service.actor(bearer(headers))
            if actor is None and service.node is not None:  # another node's internal request
                return service.node.fleet_actor(headers)
            return actor

        def ready() -> bool:
            return bool(service.ready)

        return Admission(limits or HttpLimits(), authenticate, ready)

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
        self, method: str, path: str, raw_query: bytes, headers: dict[bytes, bytes], body: bytes | None,
        admitted: Actor | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:  # fmt: skip
        """One request, whoever carried it (ASGI here, or the built-in HTTP server).

        ``body`` is None when it was larger than BODY_BYTES_MAX (answered 422). ``admitted``:
        who the key was found to be before the body was read (``admission``), so it is not
        hashed and looked up again; None: the key is authenticated here.
        """
        started = time.perf_counter()
        route = "unmatched"
        try:
            route, reply, extra = await self._handle(method, path, raw_query, headers, body, admitted)
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
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start_service(self) -> None:
        """Recover the shards (run in the background: the HTTP server answers meanwhile)."""
        try:
            await self.service.start()  # storage that is away is waited for in there (engine.start)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a broken invariant: the shard says ``failed`` in /readyz
            log.critical("recovery failed; the service stays unready", exc_info=True)
            return
        feed = self._events_feed
        if feed is not None and feed.retention_s is not None and self._pruner is None:
            self._pruner = asyncio.create_task(feed.run_pruner())

    async def _handle(
        self, method: str, path: str, raw_query: bytes, headers: dict[bytes, bytes], body: bytes | None,
        admitted: Actor | None,
    ) -> tuple[str, Reply, list[tuple[bytes, bytes]]]:  # fmt: skip
        if path in _FIXED_PATHS and method != "GET" and method != "HEAD":
            return "unmatched", _not_allowed(method, path, _READ_ONLY), [(b"allow", _READ_ONLY)]
        if path == "/healthz":
            return path, json_reply(200, {"status": "ok"}), []
        if path == "/readyz":
            ready = self.service.ready
            # Per shard: its state, failed attempts to reach storage, the last storage error, and
            # while retrying, the seconds to the next attempt (README "Readiness").
            shards = self.service.shard_statuses()
            if ready:
                return path, json_reply(200, {"ready": ready, "shards": shards}), []
            # A 503 goes out as problem+json, so the body is a problem (with the shard states as extensions).
            waiting = sorted({str(status["state"]) for status in shards.values()} - {"ready"})
            detail = (
                "not every shard is ready: " + ", ".join(waiting)
                if waiting
                else "the shards are ready; loading API keys and pending transfers"
            )
            document = {**msgspec.json.decode(problem(e.UNAVAILABLE, 503, detail)), "ready": ready, "shards": shards}
            return path, json_reply(503, document), []
        if path == "/metrics":
            feed = self._events_feed
            if feed is not None and feed.sinks:  # the relays' lag, wherever they run
                await feed.observe(self.metrics)
            return (
                path,
                Reply(200, generate_latest(self.metrics.registry)),
                [(b"content-type", b"text/plain; version=0.0.4")],
            )
        if path == "/openapi.json":
            return path, Reply(200, self._openapi), []
        if path.startswith(_INTERNAL) and self.service.node is not None:  # nodes only (the fleet secret)
            return _INTERNAL, await self.service.node.internal(method, path, headers, b"" if body is None else body), []
        parts = path.strip("/").split("/")
        handler, pattern, params = self._match("GET" if method == "HEAD" else method, parts)
        if handler is None:
            allowed = self._allowed(parts)
            if allowed:  # the path is a route, the method is not one of its own: 405 and what it serves
                return "unmatched", _not_allowed(method, path, allowed), [(b"allow", allowed)]
            return "unmatched", Reply(404, problem("not_found", 404, f"{method} {path} is not a route")), []
        query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {}
        request = Request(method, path, query, headers, b"" if body is None else body)  # None: too large, 400 below
        try:
            if not self.service.ready:  # first: partner keys are only known once recovery has loaded them
                raise HttpError(e.UNAVAILABLE, 503, "the service is recovering; retry shortly")
            # Admitted before its body: the same key, as it stands now (revoked or its account
            # frozen or closed meanwhile: as if it came now).
            actor = self.service.actor(bearer(headers)) if admitted is None else self.service.current(admitted)
            if actor is None:  # also a revoked key, or one of a closed account
                raise HttpError(e.UNAUTHORIZED, 401, "missing, unknown or revoked API key")
            if body is None:
                raise validation(f"body larger than {BODY_BYTES_MAX} bytes")
            content_type = headers.get(b"content-type")
            if content_type is not None and method in _WITH_BODY and not json_media_type(content_type):
                shown = content_type[:80].decode("latin-1")
                raise HttpError(UNSUPPORTED_MEDIA_TYPE, 415, f"Content-Type {shown} is not application/json")
            request.principal, request.actor = actor.principal, actor
            node = self.service.node
            if node is not None:  # a fleet node: what is on a shard it does not own, its owner answers
                if params and (pattern.startswith(_ACCOUNT_ROUTE) or pattern.startswith(_PARTNER_ROUTE)):
                    shard = node.shard_elsewhere(params[0])
                    if shard is not None and await node.placement_behind(headers):
                        shard = node.shard_elsewhere(params[0])  # a partner move's switch, just read
                elif pattern in _BODY_ACCOUNT_ROUTES and method == "POST":
                    shard = node.body_shard_elsewhere(pattern, request.body, headers)
                    source = _source_of(pattern, request.body) if shard is None else None
                    if source is not None and node.shard_elsewhere(source) is not None:
                        await node.placement_behind(headers)  # forwarded here: a move's switch, read now
                else:
                    shard = None
                if shard is not None:  # (the key was checked here first)
                    return pattern, await node.forward(shard, method, path, raw_query, headers, request.body), []
            if "." in params or ".." in params:
                raise validation("'.' and '..' are not ids")
            reply = await handler(self, request, params)
            if reply.status == 503 and node is not None and _moved_elsewhere(reply):
                # A partner move switched it to another node's shard meanwhile: its owner answers.
                moved = (
                    params[0] if params and pattern.startswith(_ACCOUNT_ROUTE) else _source_of(pattern, request.body)
                )
                shard = None if moved is None else node.shard_elsewhere(moved)
                if shard is not None:  # (once more if another node sent it here: the move is why)
                    forwarded = await node.forward(shard, method, path, raw_query, headers, request.body, again=True)
                    return pattern, forwarded, []
        except HttpError as exc:
            reply = Reply(exc.status, problem(exc.code, exc.status, exc.detail))
            self._count_refusal(pattern, exc.code)
        extra = [(b"www-authenticate", b"Bearer")] if reply.status == 401 else []
        return pattern, reply, extra

    def _count_refusal(self, pattern: str, code: str) -> None:
        """A refusal answered here, before the engine (a malformed body, a key, a media type),
        counted as the engine counts its own: balance_operations{kind, outcome}."""
        key = (_KIND_OF_ROUTE.get(pattern, "read"), code)
        counter = self._refusals.get(key)
        if counter is None:
            counter = self._refusals[key] = self.metrics.operations.labels(*key)
        counter.inc()

    def _match(self, method: str, parts: list[str]) -> tuple[Handler | None, str, list[str]]:
        for route_method, route_parts, handler, pattern in self._routes.get(len(parts), ()):
            if route_method != method:
                continue
            params = []
            for want, got in zip(route_parts, parts, strict=True):
                if want.startswith("{"):
                    params.append(got)
                elif want != got:
                    break
            else:
                return handler, pattern, params
        return None, "", []

    def _allowed(self, parts: list[str]) -> bytes:
        """The methods a path serves, as an ``Allow`` header value (empty: no route has the path).
        HEAD wherever GET is: the built-in server answers it as GET without the body."""
        methods: list[str] = []
        for route_method, route_parts, _, _ in self._routes.get(len(parts), ()):
            if all(want.startswith("{") or want == got for want, got in zip(route_parts, parts, strict=True)):
                methods += [route_method, "HEAD"] if route_method == "GET" else [route_method]
        return ", ".join(sorted(set(methods))).encode()


_FIXED_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")
_READ_ONLY = b"GET, HEAD"


def _not_allowed(method: str, path: str, allowed: bytes) -> Reply:
    detail = f"{method} is not served on {path}; it serves {allowed.decode()}"
    return Reply(405, problem("method_not_allowed", 405, detail))
