"""The service's HTTP/1.1 server: llhttp (``httptools``) parses, this module carries.

Why not uvicorn on the hot path: per request uvicorn builds an ASGI scope, a cycle object,
message dicts and receive/send coroutines; on a single operation that was a quarter of the
service's CPU (BENCHMARKS.md: 1.12-1.33× the requests per second with this server, at less
CPU). Here a request goes from the parser's callbacks to ``BalanceApp.serve`` and its answer
into one ``write``. Parsing (request line, headers, chunked bodies) is llhttp's; this module
does connection handling: keep-alive with an idle timeout (which also ends a request that
stops arriving), pipelined requests answered in order, ``Expect: 100-continue``, the body
size limit, a header size limit (431), back-pressure on a client that does not read, 400 on
a malformed request, a lingering close (the last answer is not lost to a reset), and a
graceful stop. ``BALANCE_HTTP_SERVER=uvicorn`` serves the same app through uvicorn instead
(``balance.asgi:app`` for any ASGI server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

from balance.api.body import BODY_BYTES_MAX
from balance.views import problem

log = logging.getLogger("balance.http")

Headers = list[tuple[bytes, bytes]]
Serve = Callable[[str, str, bytes, dict[bytes, bytes], "bytes | None"], Awaitable[tuple[int, Headers, bytes]]]

PIPELINE_MAX = 64  # requests read ahead on one connection before it stops reading
LINGER_S = 2.0  # how long a closing connection waits for the client to close its side
HEAD_BYTES_MAX = 64 * 1024  # request line and headers; more is refused (431), not buffered on
IDLE_TIMEOUT_S = 75.0  # a keep-alive connection with nothing to do is closed after this (as nginx)
_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 409: b"Conflict",
    413: b"Content Too Large", 431: b"Request Header Fields Too Large", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    500: b"Internal Server Error", 503: b"Service Unavailable",
}  # fmt: skip
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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


def _bad_request(detail: str, status: int = 400) -> bytes:
    body = problem("bad_request", status, detail)
    return response(status, [(b"content-type", b"application/problem+json")], body, keep_alive=False)


class _Request:
    __slots__ = ("method", "path", "query", "headers", "chunks", "size", "keep_alive", "answer")

    def __init__(self) -> None:
        self.method = ""
        self.path = "/"
        self.query = b""
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.answer: bytes | None = None


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are served concurrently, answered in arrival order."""

    def __init__(self, serve: Serve, server: HttpServer) -> None:
        self._serve = serve
        self._server = server
        self._loop = server.loop
        self._body_max = server.body_bytes_max
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._current: _Request | None = None
        self._url = b""
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0  # bytes read into that head, counted per read (bounded, not exact)
        self._queue: deque[_Request] = deque()  # requests not answered yet, in arrival order
        self._paused_pipeline = False  # reading paused: too many requests ahead
        self._paused_writes = False  # reading paused: the client does not read our answers
        self._closed = False
        self._reading_stopped = False  # the server is stopping: no more reads
        self._discarding = False  # a malformed request: what follows is read and dropped until the close
        self.active_at = self._loop.time()  # the last bytes read or answer written

    # ---- asyncio -------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests already handed to the engine still complete (committed or not, as with any
        # client that hangs up); only their answers have nowhere to go.
        self._closed = True
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._reading_stopped or self._discarding:
            return
        self.active_at = self._loop.time()
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject("protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            self._reject(f"malformed HTTP request: {str(exc)[:100]}")
            return
        if in_head and self._in_head:  # the whole read went into one head that is still not complete
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_BYTES_MAX:
                self._reject(f"request line and headers larger than {HEAD_BYTES_MAX} bytes", 431)

    def pause_writing(self) -> None:
        self._paused_writes = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_writes = False
        self._update_reading()

    # ---- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Request()
        self._url = b""
        self._in_head, self._head_bytes = True, 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.lower()] = value  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._current
        assert request is not None
        request.method = self._parser.get_method().decode("ascii")
        request.keep_alive = self._parser.should_keep_alive()
        url = self._url
        mark = url.find(b"?")
        raw_path = url if mark < 0 else url[:mark]
        if mark >= 0:
            request.query = url[mark + 1 :]
        request.path = raw_path.decode("latin-1") if b"%" not in raw_path else unquote(raw_path.decode("ascii"))
        if request.headers.get(b"expect", b"").lower() == b"100-continue" and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        request.size += len(body)
        if request.size <= self._body_max:  # a larger body is read to its end and dropped: 422
            request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        self._current = None
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
        if request.size > self._body_max:
            body: bytes | None = None  # the app answers 422 for it
        elif len(request.chunks) == 1:
            body = request.chunks[0]
        else:
            body = b"".join(request.chunks)
        try:
            status, headers, payload = await self._serve(
                request.method, request.path, request.query, request.headers, body
            )
            request.answer = response(
                status, headers, payload, keep_alive=request.keep_alive, head=request.method == "HEAD"
            )
        except Exception:  # serve answers its own errors: this would be a bug in the carrier
            log.exception("unhandled error")
            request.answer = response(500, [(b"content-type", b"text/plain")], b"internal error", keep_alive=False)
            request.keep_alive = False
        self._flush()

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
        self.active_at = self._loop.time()
        if close:
            self._closed = True
            self._linger(transport)
        elif self._paused_pipeline and len(queue) <= PIPELINE_MAX // 2:
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

    def _reject(self, detail: str, status: int = 400) -> None:
        """A malformed request: 400 (431 for oversized headers) after the answers owed before it, then close."""
        if self._closed or self._transport is None:
            return
        self._discarding = True
        request = _Request()
        request.keep_alive = False
        request.answer = _bad_request(detail, status)
        self._queue.append(request)
        self._flush()

    # ---- the server's housekeeping -------------------------------------------------------

    @property
    def answering(self) -> bool:
        return bool(self._queue)

    def stop_reading(self) -> None:
        self._reading_stopped = True
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def close(self) -> None:
        if not self._closed and self._transport is not None:
            self._closed = True
            self._transport.close()


class HttpServer:
    """Listens, tracks connections, closes idle ones, and stops gracefully."""

    def __init__(
        self, serve: Serve, *, idle_timeout_s: float = IDLE_TIMEOUT_S, body_bytes_max: int = BODY_BYTES_MAX
    ) -> None:
        self.serve = serve
        self.idle_timeout_s = idle_timeout_s
        self.body_bytes_max = body_bytes_max
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # requests being served
        self.loop = asyncio.get_running_loop()
        self._listener: Any = None  # under uvloop these are uvloop's own classes
        self._sweeper: Any = None

    async def listen(self, host: str, port: int, backlog: int = 4096) -> int:
        """Start accepting; returns the bound port (``port`` 0: any free one)."""
        self._listener = await self.loop.create_server(
            lambda: HttpProtocol(self.serve, self), host, port, backlog=backlog
        )
        self._sweep_later()
        listening: Any = self._listener.sockets[0]
        return int(listening.getsockname()[1])  # a tuple, or a list under uvloop

    def _sweep_later(self) -> None:
        self._sweeper = self.loop.call_later(min(1.0, self.idle_timeout_s / 2), self._sweep)

    def _sweep(self) -> None:
        # Nothing owed to the client and nothing from it for the timeout: between requests, or
        # in the middle of one that stopped coming (a request is not allowed to take forever).
        deadline = self.loop.time() - self.idle_timeout_s
        for connection in [c for c in self.connections if not c.answering and c.active_at < deadline]:
            connection.close()
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
