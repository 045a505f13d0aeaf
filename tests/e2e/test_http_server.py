"""The built-in HTTP/1.1 server (``balance.api.http1``) on real sockets: what it carries itself.

The API's behaviour through it is covered by every ``api`` test (they run over ASGI and over
this server). Here: keep-alive, pipelining in order, chunked bodies, ``Expect: 100-continue``,
HEAD, the body and header limits, malformed requests, ``Connection: close``, HTTP/1.0, the idle timeout,
back-pressure, and a graceful stop that answers what is in flight; on asyncio's loop and uvloop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from balance import bootstrap
from balance.api.app import BalanceApp
from balance.api.http1 import HEAD_BYTES_MAX, PIPELINE_MAX, HttpServer
from balance.config import Settings
from balance.metrics import Metrics

ADMIN = "test-admin"
AUTH = f"Authorization: Bearer {ADMIN}\r\n".encode()


class Served:
    def __init__(self, server: HttpServer, port: int, app: BalanceApp) -> None:
        self.server, self.port, self.app = server, port, app

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def _serve(tmp_path: Path, **server_options: Any) -> AsyncIterator[Served]:
    settings = Settings.from_env({"BALANCE_DATA_DIR": str(tmp_path), "BALANCE_ADMIN_KEY": ADMIN})
    metrics = Metrics()
    service = bootstrap.build_service(settings, metrics=metrics)
    await service.start()
    app = BalanceApp(service, metrics, start_service=False)
    server = HttpServer(app.serve, **server_options)
    port = await server.listen("127.0.0.1", 0)
    try:
        yield Served(server, port, app)
    finally:
        await server.stop()
        await service.stop()


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def served_test(**server_options: Any) -> Callable[[Callable[[Served], Awaitable[None]]], Any]:
    """A test on a fresh server, run once on asyncio's loop and once on uvloop (what the service
    runs on: its transports and handles are not asyncio's classes, and the compiled module must
    not assume they are)."""

    def wrap(scenario: Callable[[Served], Awaitable[None]]) -> Any:
        @pytest.mark.parametrize("loop", list(LOOPS))
        def test(loop: str, tmp_path: Path) -> None:
            async def body() -> None:
                async for served in _serve(tmp_path, **server_options):
                    await scenario(served)

            with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
                runner.run(body())

        test.__name__, test.__doc__ = scenario.__name__, scenario.__doc__
        return test

    return wrap


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
    return int(status), headers, body


def post_head(path: str, headers: bytes) -> bytes:
    """The request line and headers of an authorised POST (``headers``: more, each ending in CRLF)."""
    return b"POST %b HTTP/1.1\r\nHost: t\r\n%b%b\r\n" % (path.encode(), AUTH, headers)


def post(path: str, body: dict[str, Any], extra: bytes = b"") -> bytes:
    raw = json.dumps(body).encode()
    return post_head(path, b"Content-Type: application/json\r\nContent-Length: %d\r\n%b" % (len(raw), extra)) + raw


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: t\r\n%b%b\r\n" % (path.encode(), AUTH, extra)


async def funded_account(served: Served, amount: int = 1_000) -> str:
    reader, writer = await served.connect()
    writer.write(post("/v1/accounts", {"kind": "partner", "region": "US", "currency": "USD"}))
    status, _, body = await read_response(reader)
    assert status == 201, body
    account = json.loads(body)["id"]
    writer.write(post(f"/v1/accounts/{account}/credits", {"id": "fund", "amount": amount}))
    status, _, body = await read_response(reader)
    assert status == 201, body
    writer.close()
    return str(account)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 10) == b""


@served_test()
async def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    for i in range(20):
        writer.write(post(f"/v1/accounts/{account}/holds", {"id": f"h{i}", "amount": 1}))
        status, headers, body = await read_response(reader)
        assert status == 201, body
        assert headers["content-type"] == "application/json"
        assert "date" in headers and "connection" not in headers
    writer.write(get(f"/v1/accounts/{account}"))
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["reserved"]) == (200, 20)
    writer.close()


@served_test()
async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    # One write, three requests: a read, a money operation (waits for a commit), a read.
    writer.write(
        get("/healthz")
        + post(f"/v1/accounts/{account}/holds", {"id": "p1", "amount": 5})
        + get(f"/v1/accounts/{account}")
    )
    answers = [await read_response(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 201, 200]
    assert json.loads(answers[0][2]) == {"status": "ok"}
    assert json.loads(answers[1][2])["hold"]["id"] == "p1"
    assert json.loads(answers[2][2])["id"] == account
    writer.close()


@served_test()
async def test_many_pipelined_requests_past_the_read_ahead_limit(served: Served) -> None:
    account = await funded_account(served, amount=10_000)
    reader, writer = await served.connect()
    count = PIPELINE_MAX * 3
    writer.write(b"".join(post(f"/v1/accounts/{account}/holds", {"id": f"m{i}", "amount": 1}) for i in range(count)))
    ids = []
    for _ in range(count):
        status, _, body = await read_response(reader)
        assert status == 201, body
        ids.append(json.loads(body)["hold"]["id"])
    assert ids == [f"m{i}" for i in range(count)]
    writer.close()


@served_test()
async def test_replay_and_retry_headers_pass_through(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    for _ in range(2):
        writer.write(post(f"/v1/accounts/{account}/debits", {"id": "d1", "amount": 7}))
    first, second = await read_response(reader), await read_response(reader)
    assert first[0] == second[0] == 201 and first[2] == second[2]
    assert "idempotent-replayed" not in first[1] and second[1]["idempotent-replayed"] == "true"
    writer.close()


@served_test()
async def test_chunked_request_body(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "c1", "amount": 3}).encode()
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (raw[:5], raw[5:])) + b"0\r\n\r\n"
    writer.write(post_head(f"/v1/accounts/{account}/credits", b"Transfer-Encoding: chunked\r\n") + chunks)
    status, _, body = await read_response(reader)
    assert status == 201, body
    assert json.loads(body)["account"]["balance"] == 1_003
    writer.close()


@served_test()
async def test_expect_100_continue(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "e1", "amount": 2}).encode()
    writer.write(
        post_head(f"/v1/accounts/{account}/credits", b"Expect: 100-continue\r\nContent-Length: %d\r\n" % len(raw))
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(raw)
    status, _, body = await read_response(reader)
    assert status == 201, body
    writer.close()


@served_test()
async def test_head_gets_headers_without_body(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + get("/healthz"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 15\r\n" in head
    status, _, body = await read_response(reader)  # the next answer follows at once: no body was sent
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    writer.close()


@served_test()
async def test_percent_encoded_path_is_decoded(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    encoded = "".join(f"%{ord(ch):02X}" for ch in account[:3]) + account[3:]
    writer.write(get(f"/v1/accounts/{encoded}?limit=5"))
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["id"]) == (200, account)
    writer.close()


@served_test(body_bytes_max=1_000)
async def test_body_over_the_limit_is_refused_and_changes_nothing(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "big", "amount": 1, "description": "x" * 2_000}).encode()
    writer.write(post_head(f"/v1/accounts/{account}/credits", b"Content-Length: %d\r\n" % len(raw)) + raw)
    status, headers, body = await read_response(reader)
    assert status == 422 and headers["content-type"] == "application/problem+json"
    assert "body larger than" in json.loads(body)["detail"]
    writer.write(get(f"/v1/accounts/{account}"))  # the connection is still usable
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["balance"]) == (200, 1_000)
    writer.close()


@served_test()
async def test_malformed_request_gets_400_after_earlier_answers_then_close(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(get("/healthz") + b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, headers, body = await read_response(reader)
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (400, "bad_request")
    assert await closed_by_server(reader)
    writer.close()


@served_test()
async def test_oversized_headers_get_431_then_close(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(get("/healthz") + b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
    for _ in range(2 * HEAD_BYTES_MAX // 8192):  # a header that never ends, in reads of its own
        try:
            writer.write(b"a" * 8192)
            await writer.drain()
        except ConnectionError:
            break  # refused and closed already
        await asyncio.sleep(0.005)
    assert (await read_response(reader))[0] == 200  # the request before it is answered first
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"]) == (431, "close")
    assert json.loads(body)["status"] == 431
    assert await closed_by_server(reader)
    writer.close()


@served_test()
async def test_connection_close_and_http_1_0(served: Served) -> None:
    for request in (get("/healthz", b"Connection: close\r\n"), b"GET /healthz HTTP/1.0\r\n\r\n"):
        reader, writer = await served.connect()
        writer.write(request)
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await closed_by_server(reader)
        writer.close()


@served_test(idle_timeout_s=0.3)
async def test_idle_connection_is_closed_after_the_timeout(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(get("/healthz"))
    assert (await read_response(reader))[0] == 200
    assert await closed_by_server(reader)
    assert not served.server.connections
    writer.close()


@served_test(idle_timeout_s=0.3)
async def test_a_request_that_stops_arriving_is_closed_after_the_timeout(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"POST /v1/accounts HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")  # 99 bytes owed
    assert await closed_by_server(reader)
    assert not served.server.connections
    writer.close()


@served_test()
async def test_stop_answers_requests_in_flight_and_refuses_new_connections(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    writer.write(b"".join(post(f"/v1/accounts/{account}/holds", {"id": f"s{i}", "amount": 1}) for i in range(10)))
    for _ in range(1000):  # stop once the server has read some of them
        if any(connection.answering for connection in served.server.connections):
            break
        await asyncio.sleep(0.001)
    await served.server.stop()
    answered = 0
    while not reader.at_eof():
        try:
            status, _, body = await read_response(reader)
        except asyncio.IncompleteReadError:
            break
        assert status == 201, body
        answered += 1
    assert answered >= 1
    with pytest.raises(OSError):
        await served.connect()
    # What was read was applied and answered; what was not read was not applied.
    state = served.app.service.account_state(account)
    assert state is not None and state[8] == answered  # reserved
    writer.close()
