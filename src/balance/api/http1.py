"""The service's HTTP/1.1 server: llhttp (``httptools``) parses, this module carries.

Why not uvicorn on the hot path: per request uvicorn builds an ASGI scope, a cycle object,
message dicts and receive/send coroutines; on a single operation that was a quarter of the
service's CPU (BENCHMARKS.md: 1.12-1.33× the requests per second with this server, at less
CPU). Here a request goes from the parser's callbacks to ``BalanceApp.serve`` and its answer
into one ``write``. Parsing (request line, headers, chunked bodies) is llhttp's; this module
does connection handling: keep-alive, pipelined requests answered in order, back-pressure on
a client that does not read, 400 on a malformed request, a lingering close (the last answer
is not lost to a reset), and a graceful stop. And what a server on a payment path owes its
other clients (docs/limits.md): a body is admitted from the head before it is read (key,
size for its route, the process's budget: ``admission.py``), ``Expect: 100-continue`` only
then; a deadline for a whole head and a whole body (408), not an idle timer that each byte
resets; a cap on open connections (beyond it: 503 at once); the header size limit on the
total (431); two ``Authorization`` headers are 400; ``Upgrade`` is ignored (the request is
answered as HTTP/1.1, then the connection closed); a closed connection frees its buffers at
once (no reference cycle left for the collector). ``BALANCE_HTTP_SERVER=uvicorn`` serves the
same app through uvicorn instead (``balance.asgi:app`` for any ASGI server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

from balance.api.admission import RETRY_AFTER, Admission, HttpLimits, Refused
from balance.domain.authority import Actor
from balance.views import problem

log = logging.getLogger("balance.http")

Headers = list[tuple[bytes, bytes]]
# method, path, query, headers, body, and who the admission found the key to be (None: not
# authenticated before the body: a request without one, or an admission without keys).
Serve = Callable[
    [str, str, bytes, dict[bytes, bytes], "bytes | None", "Actor | None"], Awaitable[tuple[int, Headers, bytes]]
]
Refusals = Callable[[str], None]  # counts a refusal by reason (metrics)

PIPELINE_MAX = 64  # requests read ahead on one connection before it stops reading
LINGER_S = 2.0  # how long a closing connection waits for the client to close its side
HEAD_BYTES_MAX = 64 * 1024  # request line and headers, in total; more is refused (431), not buffered on
IDLE_TIMEOUT_S = 75.0  # a keep-alive connection with nothing to do is closed after this (as nginx)
_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
    413: b"Content Too Large", 415: b"Unsupported Media Type", 431: b"Request Header Fields Too Large",
    422: b"Unprocessable Content", 429: b"Too Many Requests", 500: b"Internal Server Error",
    503: b"Service Unavailable",
}  # fmt: skip
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FOREVER = float("inf")


class _Date:
    """The Date header, formatted once per second."""

    __slots__ = ("second", "line")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def header(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.line = b"date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
        return self.line


_date = _Date()


def response(status: int, headers: Headers, body: bytes, *, keep_alive: bool = True, head: bool = False) -> bytes:
    """One HTTP/1.1 response, head and body (``head``: a HEAD request gets no body)."""
    parts = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Status"))]
    for name, value in headers:
        parts.append(b"%b: %b\r\n" % (name, value))
    parts.append(_date.header())
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"content-length: %d\r\n\r\n" % len(body))
    if not head:
        parts.append(body)
    return b"".join(parts)


def refusal(status: int, code: str, detail: str) -> bytes:
    """A problem+json answer after which the connection closes (Retry-After on a 503)."""
    headers: Headers = [(b"content-type", b"application/problem+json")]
    if status == 503:
        headers.append((b"retry-after", RETRY_AFTER))
    elif status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return response(status, headers, problem(code, status, detail), keep_alive=False)


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; the protocol's ``_refused`` says why."""


class _Request:
    __slots__ = (
        "method", "path", "query", "headers", "chunks", "size", "keep_alive", "answer",
        "principal", "charged", "chunked", "limit", "actor",
    )  # fmt: skip

    def __init__(self) -> None:
        self.method = ""
        self.path = "/"
        self.query = b""
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.answer: bytes | None = None
        self.principal: str | None = None  # set while an admitted body is arriving
        self.charged = 0  # bytes charged to the process's body budget, released once answered
        self.chunked = False
        self.limit = 0
        self.actor: Actor | None = None  # who the key is, found by the admission before the body


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are served concurrently, answered in arrival order."""

    def __init__(self, serve: Serve, server: HttpServer) -> None:
        self._serve = serve
        self._server = server
        self._loop = server.loop
        self._admission = server.admission
        self._parser: Any = httptools.HttpRequestParser(self)  # None once closed (breaks the cycle)
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._current: _Request | None = None
        self._url = b""
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0  # the head's bytes parsed so far (request line, header fields)
        self._pending_bytes = 0  # bytes read into a head field llhttp has not handed over yet
        self._queue: deque[_Request] = deque()  # requests not answered yet, in arrival order
        self._paused_pipeline = False  # reading paused: too many requests ahead
        self._paused_writes = False  # reading paused: the client does not read our answers
        self._closed = False
        self._reading_stopped = False  # the server is stopping: no more reads
        self._discarding = False  # a refused request: what follows is read and dropped until the close
        self._refused: tuple[int, str, str, str] | None = None  # why a callback stopped the parser
        self._expired = False  # past its deadline: closed without lingering
        # A new connection owes its first head within the head timeout (not the idle one): a
        # client that connects and says nothing holds its place no longer than a slow one.
        self.deadline = self._loop.time() + server.limits.head_timeout_s  # see HttpServer._sweep

    # ---- asyncio -------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        server = self._server
        if len(server.connections) >= server.connections_cap:
            # Refused at once, with an answer: a client left waiting in the backlog learns nothing.
            self._closed = self._discarding = True
            self._parser = None
            transport.write(server.busy_answer)
            transport.close()
            server.refused("connections")
            return
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests already handed to the engine still complete (committed or not, as with any
        # client that hangs up); only their answers have nowhere to go. What this connection
        # buffered is freed now: the parser refers back to this protocol, and with the raised
        # collector thresholds that cycle (and a body in it) would wait long to be collected.
        self._closed = True
        self._server.connections.discard(self)
        request = self._current
        if request is not None:
            self._current = None
            self._settle(request)
        self._parser = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._reading_stopped or self._discarding:
            return
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            refused = self._refused
            if refused is None:  # a bug in a callback
                log.exception("HTTP parser callback failed")
                self._reject(500, "internal_error", "internal error", "error")
            else:
                self._reject(*refused)
            return
        except httptools.HttpParserUpgrade:
            self._upgrade()
            return
        except httptools.HttpParserError as exc:
            self._reject(400, "bad_request", f"malformed HTTP request: {str(exc)[:100]}", "malformed")
            return
        if self._in_head:  # a head field still arriving: llhttp holds its bytes until it ends
            if in_head:
                self._pending_bytes += len(data)
            if self._head_bytes + self._pending_bytes > HEAD_BYTES_MAX:
                self._reject(431, "bad_request", f"request line and headers larger than {HEAD_BYTES_MAX} bytes", "head")

    def pause_writing(self) -> None:
        self._paused_writes = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_writes = False
        self._update_reading()

    # ---- llhttp callbacks ----------------------------------------------------------------

    def _stop(self, status: int, code: str, detail: str, reason: str) -> None:
        self._refused = (status, code, detail, reason)
        raise _Stop(detail)

    def on_message_begin(self) -> None:
        self._current = _Request()
        self._url = b""
        self._in_head, self._head_bytes, self._pending_bytes = True, 0, 0
        # A deadline for the whole head, set once: bytes that trickle in do not extend it.
        self.deadline = self._loop.time() + self._server.limits.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        self._pending_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._current.headers  # type: ignore[union-attr]
        key = name.lower()
        if key in headers and key == b"authorization":
            self._stop(400, "bad_request", "more than one Authorization header", "malformed")
        headers[key] = value
        self._head_bytes += len(name) + len(value) + 4
        self._pending_bytes = 0
        if self._head_bytes > HEAD_BYTES_MAX:
            self._stop(431, "bad_request", f"request line and headers larger than {HEAD_BYTES_MAX} bytes", "head")

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._current
        assert request is not None
        parser = self._parser
        request.method = parser.get_method().decode("ascii")
        request.keep_alive = parser.should_keep_alive()
        url = self._url
        mark = url.find(b"?")
        raw_path = url if mark < 0 else url[:mark]
        if mark >= 0:
            request.query = url[mark + 1 :]
        # (``find``, not ``in``: ``x in bytes`` tries x as an int first and formats a TypeError)
        request.path = raw_path.decode("latin-1") if raw_path.find(b"%") < 0 else unquote(raw_path.decode("ascii"))
        headers = request.headers
        length_header = headers.get(b"content-length")
        if length_header is not None:
            length = int(length_header)  # llhttp has checked it is a number
            if length == 0:
                return
        elif headers.get(b"transfer-encoding", b"").lower().find(b"chunked") >= 0:
            length = -1
            request.chunked = True
        else:
            return  # no body
        # A body is announced: admit it from the head, or refuse it before reading a byte.
        admission = self._admission
        try:
            request.actor, request.principal = admission.begin(request.path, headers, length)
        except Refused as refused:
            self._stop(refused.status, refused.code, refused.detail, refused.code)
        request.charged = length if length > 0 else 0
        request.limit = admission.limit_of(request.path)
        self.deadline = self._loop.time() + self._server.limits.body_timeout_s
        if headers.get(b"expect", b"").lower() == b"100-continue" and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        request.size += len(body)
        if request.chunked:  # no length announced: charged, and held to the route's limit, as it arrives
            if request.size > request.limit:
                self._stop(413, "payload_too_large", f"body larger than {request.limit} bytes", "payload_too_large")
            if not self._admission.grow(len(body)):
                self._stop(
                    503, "unavailable", "the server holds as many bodies as it may; retry shortly", "unavailable"
                )
            request.charged += len(body)
        request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        self._current = None
        if request.principal is not None:
            self._admission.end_arrival(request.principal)
            request.principal = None
        self.deadline = _FOREVER  # answering: the idle timer starts when the answers are out
        self._queue.append(request)
        task = self._loop.create_task(self._answer(request))
        tasks = self._server.tasks  # held until done: the loop keeps only weak references to tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if len(self._queue) >= PIPELINE_MAX and not self._paused_pipeline:
            self._paused_pipeline = True
            self._update_reading()

    # ---- answering -----------------------------------------------------------------------

    async def _answer(self, request: _Request) -> None:
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request.chunks = []
        try:
            status, headers, payload = await self._serve(
                request.method, request.path, request.query, request.headers, body, request.actor
            )
            request.answer = response(
                status, headers, payload, keep_alive=request.keep_alive, head=request.method == "HEAD"
            )
        except Exception:  # serve answers its own errors: this would be a bug in the carrier
            log.exception("unhandled error")
            request.answer = response(500, [(b"content-type", b"text/plain")], b"internal error", keep_alive=False)
            request.keep_alive = False
        finally:
            if request.charged:
                self._admission.release(request.charged)
                request.charged = 0
        self._flush()

    def _settle(self, request: _Request) -> None:
        """Give back what a request that will never be answered holds: its place among the
        key's arriving bodies, its bytes of the budget, its chunks."""
        if request.principal is not None:
            self._admission.end_arrival(request.principal)
            request.principal = None
        if request.charged:
            self._admission.release(request.charged)
            request.charged = 0
        request.chunks = []

    def _flush(self) -> None:
        """Write the answers that are ready, in request order (pipelining)."""
        queue, transport = self._queue, self._transport
        if self._closed or transport is None:
            return
        parts: list[bytes] = []
        close = False
        while queue and queue[0].answer is not None:
            request = queue.popleft()
            parts.append(request.answer)  # type: ignore[arg-type]
            if not request.keep_alive:
                close = True
                break
        if not parts:
            return
        transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if close:
            self._closed = True
            if self._expired:  # nothing more is arriving to be reset by: free the descriptor now
                transport.close()
            else:
                self._linger(transport)
            return
        if not queue and self._current is None:  # nothing owed, nothing arriving: idle from now
            self.deadline = self._loop.time() + self._server.limits.idle_timeout_s
        if self._paused_pipeline and len(queue) <= PIPELINE_MAX // 2:
            self._paused_pipeline = False
            self._update_reading()

    def _linger(self, transport: Any) -> None:
        """Close after the last answer without losing it: send FIN, keep reading (and dropping)
        what the client still sends, close when it closes or after LINGER_S. Closing at once
        with unread bytes would make the kernel reset the connection, and the client could
        lose the answer (a 400 or 431 sent while it was still writing)."""
        if transport.can_write_eof():
            self._discarding = True
            transport.resume_reading()
            transport.write_eof()
            self._loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        if self._paused_pipeline or self._paused_writes or self._reading_stopped:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _reject(self, status: int, code: str, detail: str, reason: str) -> None:
        """A refused request: its answer after the answers owed before it, then close."""
        if self._closed or self._transport is None:
            return
        self._server.refused(reason)
        self._discarding = True
        self._in_head = False
        current = self._current
        if current is not None:  # what it was allowed to buffer is freed now, not at the close
            self._current = None
            self._settle(current)
        request = _Request()
        request.keep_alive = False
        request.answer = refusal(status, code, detail)
        self._queue.append(request)
        self._flush()

    def _upgrade(self) -> None:
        """``Upgrade`` is not served: the request was answered as plain HTTP/1.1 (llhttp completed
        it); what follows it is another protocol, so the connection closes after that answer."""
        self._discarding = True
        queue = self._queue
        if queue and queue[-1].answer is None:
            queue[-1].keep_alive = False
        else:
            self._reject(400, "bad_request", "protocol upgrades are not supported", "malformed")

    # ---- the server's housekeeping -------------------------------------------------------

    @property
    def answering(self) -> bool:
        return bool(self._queue)

    def expire(self) -> None:
        """Past the deadline: a request that did not arrive in time gets 408; an idle connection closes."""
        if self._closed:
            return
        if self._current is not None:
            what = "request line and headers" if self._in_head else "body"
            limits = self._server.limits
            seconds = limits.head_timeout_s if self._in_head else limits.body_timeout_s
            self._expired = True
            self._reject(408, "request_timeout", f"{what} not received within {seconds:g} s", "timeout")
        else:
            self.close()

    def stop_reading(self) -> None:
        self._reading_stopped = True
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()


def _always() -> bool:
    return True


class HttpServer:
    """Listens, tracks connections, enforces deadlines, and stops gracefully."""

    def __init__(
        self,
        serve: Serve,
        *,
        limits: HttpLimits | None = None,
        admission: Admission | None = None,
        refusals: Refusals | None = None,
        idle_timeout_s: float | None = None,
        body_bytes_max: int | None = None,
    ) -> None:
        """``admission``: the app's (keys, readiness); without one every body is admitted by the
        size limits alone. ``idle_timeout_s`` and ``body_bytes_max`` override ``limits`` (tests)."""
        limits = limits or (admission.limits if admission is not None else HttpLimits())
        overrides: dict[str, Any] = {}
        if idle_timeout_s is not None:
            overrides.update(idle_timeout_s=idle_timeout_s, head_timeout_s=idle_timeout_s)
            overrides.update(body_timeout_s=idle_timeout_s)
        if body_bytes_max is not None:
            overrides["body_bytes_max"] = body_bytes_max
        if overrides:
            limits = dataclasses.replace(limits, **overrides)
        if admission is None:
            admission = Admission(limits, None, _always)
        else:
            admission.limits = limits
        self.serve = serve
        self.limits = limits
        self.admission = admission
        self._refusals = refusals
        self.connections_cap = limits.connections_cap()
        self.busy_answer = refusal(503, "unavailable", "too many open connections; retry shortly")
        self.refused_count = 0
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # requests being served
        self.loop = asyncio.get_running_loop()
        self._listener: Any = None  # under uvloop these are uvloop's own classes
        self._sweeper: Any = None

    def refused(self, reason: str) -> None:
        self.refused_count += 1
        if self._refusals is not None:
            self._refusals(reason)

    async def listen(self, host: str, port: int, backlog: int = 4096) -> int:
        """Start accepting; returns the bound port (``port`` 0: any free one)."""
        self._listener = await self.loop.create_server(
            lambda: HttpProtocol(self.serve, self), host, port, backlog=backlog
        )
        self._sweep_later()
        listening: Any = self._listener.sockets[0]
        return int(listening.getsockname()[1])  # a tuple, or a list under uvloop

    def _sweep_later(self) -> None:
        limits = self.limits
        period = min(1.0, limits.idle_timeout_s / 2, limits.head_timeout_s / 2, limits.body_timeout_s / 2)
        self._sweeper = self.loop.call_later(period, self._sweep)

    def _sweep(self) -> None:
        # Each connection carries its deadline: the end of its head, of its body, or of its
        # idle time; none while it is owed answers.
        now = self.loop.time()
        for connection in [c for c in self.connections if c.deadline < now and not c.answering]:
            connection.expire()
        self._sweep_later()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let requests in flight be answered (up to ``grace_s``), close the rest."""
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in self.connections:
            connection.stop_reading()
        deadline = self.loop.time() + grace_s
        while any(c.answering for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.close()
