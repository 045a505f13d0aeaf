"""The built-in HTTP/1.1 server (``balance.api.http1``) on real sockets: what it carries itself.

The API's behaviour through it is covered by every ``api`` test (they run over ASGI and over
this server). Here: keep-alive, pipelining in order, chunked bodies, ``Expect: 100-continue``,
HEAD, the body and header limits, malformed requests, ``Connection: close``, HTTP/1.0, the idle timeout,
back-pressure, and a graceful stop that answers what is in flight; on asyncio's loop and uvloop.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from balance import bootstrap
from balance.api.admission import HttpLimits
from balance.api.app import BalanceApp
from balance.api.http1 import HEAD_BYTES_MAX, PIPELINE_MAX, HttpProtocol, HttpServer
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
    server = HttpServer(app.serve, admission=app.admission(), **server_options)
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


def post_head(path: str, headers: bytes, key: bytes = AUTH) -> bytes:
    """The request line and headers of an authorised POST (``headers``: more, each ending in CRLF;
    ``key``: the Authorization line)."""
    return b"POST %b HTTP/1.1\r\nHost: t\r\n%b%b\r\n" % (path.encode(), key, headers)


def expecting(length: int) -> bytes:
    """Headers announcing a body of ``length`` bytes, sent once the head is admitted."""
    return b"Expect: 100-continue\r\nContent-Length: %d\r\n" % length


def chunked(parts: list[bytes]) -> bytes:
    """A body in chunked transfer coding, one chunk a part."""
    return b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def post(path: str, body: dict[str, Any], extra: bytes = b"") -> bytes:
    raw = json.dumps(body).encode()
    return post_head(path, b"Content-Type: application/json\r\nContent-Length: %d\r\n%b" % (len(raw), extra)) + raw


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: t\r\n%b%b\r\n" % (path.encode(), AUTH, extra)


async def ask(served: Served, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own: its answer (the connection is closed after)."""
    reader, writer = await served.connect()
    writer.write(request)
    try:
        return await read_response(reader)
    finally:
        writer.close()


async def balance(served: Served, account: str) -> int:
    status, _, body = await ask(served, get(f"/v1/accounts/{account}"))
    assert status == 200, body
    return int(json.loads(body)["balance"])


async def funded_account(served: Served, amount: int = 1_000) -> str:
    status, _, body = await ask(served, post("/v1/accounts", {"kind": "partner", "region": "US", "currency": "USD"}))
    assert status == 201, body
    account = json.loads(body)["id"]
    status, _, body = await ask(served, post(f"/v1/accounts/{account}/credits", {"id": "fund", "amount": amount}))
    assert status == 201, body
    return str(account)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 10) == b""


async def continued(reader: asyncio.StreamReader) -> None:
    """The interim answer to ``Expect: 100-continue``: the head was admitted."""
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"


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
    writer.write(
        post_head(f"/v1/accounts/{account}/credits", b"Transfer-Encoding: chunked\r\n") + chunked([raw[:5], raw[5:]])
    )
    status, _, body = await read_response(reader)
    assert status == 201, body
    assert json.loads(body)["account"]["balance"] == 1_003
    writer.close()


@served_test()
async def test_expect_100_continue(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "e1", "amount": 2}).encode()
    writer.write(post_head(f"/v1/accounts/{account}/credits", expecting(len(raw))))
    await continued(reader)
    writer.write(raw)
    status, _, body = await read_response(reader)
    assert status == 201, body
    writer.close()


async def partner_key(served: Served, account: str) -> bytes:
    """The Authorization line of a key of ``account`` that may move its funds (made by the admin)."""
    status, _, body = await ask(served, post(f"/v1/accounts/{account}/keys", {"scopes": ["read", "move", "funds"]}))
    assert status == 201, body
    return b"Authorization: Bearer %b\r\n" % json.loads(body)["key"].encode()


@served_test()
async def test_a_request_with_a_body_looks_its_key_up_once(served: Served) -> None:
    """The admission finds who the key is before the body is read; the answer uses that Actor
    instead of hashing and looking the key up again."""
    account = await funded_account(served)
    key = await partner_key(served, account)
    registry = served.app.service.keys
    looked_up: list[str] = []
    live = registry.live

    def counting_live(key_hash: str) -> Any:
        looked_up.append(key_hash)
        return live(key_hash)

    registry.live = counting_live  # type: ignore[method-assign]
    reader, writer = await served.connect()
    raw = json.dumps({"id": "once", "amount": 5}).encode()
    writer.write(post_head(f"/v1/accounts/{account}/credits", expecting(len(raw)), key) + raw)
    await continued(reader)
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["account"]["balance"]) == (201, 1_005), body
    assert len(looked_up) == 1
    writer.close()


@served_test()
async def test_a_key_revoked_while_its_body_arrives_is_refused(served: Served) -> None:
    """Admitted from the head, then revoked before the body came: 401, and nothing changes
    (a revocation takes effect at once, even for a request already admitted)."""
    account = await funded_account(served)
    key = await partner_key(served, account)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "late", "amount": 5}).encode()
    writer.write(post_head(f"/v1/accounts/{account}/credits", expecting(len(raw)), key))
    await continued(reader)  # admitted
    (record,) = served.app.service.keys.of_account(account)
    status, _, body = await ask(
        served,
        b"DELETE /v1/accounts/%b/keys/%b HTTP/1.1\r\nHost: t\r\n%b\r\n"
        % (account.encode(), record.key_id.encode(), AUTH),
    )
    assert status == 200, body
    writer.write(raw)
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["code"], headers["www-authenticate"]) == (401, "unauthorized", "Bearer")
    assert await balance(served, account) == 1_000
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
    encoded = "".join(f"%{ord(ch):02X}" for ch in account[:3]) + account[3:]
    status, _, body = await ask(served, get(f"/v1/accounts/{encoded}?limit=5"))
    assert (status, json.loads(body)["id"]) == (200, account)


@served_test(body_bytes_max=1_000)
async def test_body_over_the_limit_is_refused_before_it_is_read_and_changes_nothing(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "big", "amount": 1, "description": "x" * 2_000}).encode()
    # Expect: 100-continue, so the refusal must come from the head alone, before the body is sent.
    writer.write(post_head(f"/v1/accounts/{account}/credits", expecting(len(raw))))
    status, headers, body = await read_response(reader)
    assert (status, headers["content-type"], headers["connection"]) == (413, "application/problem+json", "close")
    assert json.loads(body)["code"] == "payload_too_large"
    assert await closed_by_server(reader)
    writer.close()
    assert await balance(served, account) == 1_000


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
    writer.write(post_head("/v1/accounts", b"Content-Length: 100\r\n") + b"{")  # 99 bytes owed
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], json.loads(body)["code"]) == (408, "close", "request_timeout")
    assert await closed_by_server(reader)
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


# ---- what one client may cost the others (docs/limits.md) -----------------------------------


def batch_head(length: int, key: bytes = AUTH, extra: bytes = b"") -> bytes:
    return b"POST /v1/batch HTTP/1.1\r\nHost: t\r\n%bContent-Length: %d\r\n%b\r\n" % (key, length, extra)


@served_test()
async def test_anonymous_body_is_refused_from_the_head_without_100_continue(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(batch_head(15 * 1024 * 1024, key=b"", extra=b"Expect: 100-continue\r\n"))
    status, headers, body = await read_response(reader)  # the first thing back is the 401, not 100 Continue
    assert (status, headers["connection"], json.loads(body)["code"]) == (401, "close", "unauthorized")
    assert headers["www-authenticate"] == "Bearer"
    assert await closed_by_server(reader)
    assert served.server.admission.buffered == 0
    writer.close()


@served_test()
async def test_a_wrong_key_is_refused_before_the_body(served: Served) -> None:
    status, headers, _ = await ask(served, batch_head(1_000, key=b"Authorization: Bearer nope\r\n"))
    assert (status, headers["connection"]) == (401, "close")


@served_test(limits=HttpLimits(key_bodies_max=2, body_bytes_max=80))  # the batch below counts as large
async def test_a_key_may_have_only_a_few_large_bodies_arriving(served: Served) -> None:
    account = await funded_account(served)
    raw = json.dumps({"operations": [{"op": "credit", "account_id": account, "id": "k1", "amount": 1}]}).encode()
    slow = [await served.connect() for _ in range(2)]
    for _, writer in slow:  # the heads and half of each body: two bodies arriving for this key
        writer.write(batch_head(len(raw)) + raw[:10])
        await writer.drain()
    await asyncio.sleep(0.05)
    reader, writer = await served.connect()
    writer.write(batch_head(len(raw), extra=b"Expect: 100-continue\r\n"))
    status, headers, body = await read_response(reader)
    assert (status, headers["retry-after"], json.loads(body)["code"]) == (503, "1", "unavailable")
    writer.close()
    for reader, writer in slow:  # the admitted ones finish and are served
        writer.write(raw[10:])
        status, _, body = await read_response(reader)
        assert status == 200, body
        writer.close()
    assert not served.server.admission.arriving and served.server.admission.buffered == 0


@served_test(limits=HttpLimits(key_bodies_max=2))
async def test_many_small_bodies_of_one_key_arriving_at_once_are_all_served(served: Served) -> None:
    """A gateway's connections under one key, each sending its head and body in two writes."""
    account = await funded_account(served)
    clients = [await served.connect() for _ in range(20)]
    raws = [json.dumps({"id": f"small{i}", "amount": 1}).encode() for i in range(20)]
    for (_, writer), raw in zip(clients, raws, strict=True):
        writer.write(post_head(f"/v1/accounts/{account}/credits", b"Content-Length: %d\r\n" % len(raw)))
        await writer.drain()
    await asyncio.sleep(0.05)
    for (_, writer), raw in zip(clients, raws, strict=True):
        writer.write(raw)
    for reader, writer in clients:
        status, _, body = await read_response(reader)
        assert status == 201, body
        writer.close()
    assert await balance(served, account) == 1_020


@served_test(limits=HttpLimits(body_budget_bytes=100_000))
async def test_bodies_share_one_budget_per_process(served: Served) -> None:
    first_reader, first = await served.connect()
    first.write(batch_head(80_000) + b"{")
    await first.drain()
    await asyncio.sleep(0.05)
    assert served.server.admission.buffered == 80_000
    status, headers, _ = await ask(served, batch_head(30_000))
    assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
    first.close()  # a client that leaves mid-body gives its share back at once
    for _ in range(200):
        if served.server.admission.buffered == 0:
            break
        await asyncio.sleep(0.01)
    assert served.server.admission.buffered == 0 and not served.server.admission.arriving


@served_test(body_bytes_max=1_000)
async def test_a_chunked_body_over_the_route_limit_is_refused_as_it_arrives(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    part = b"x" * 600
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for _ in range(2))
    writer.write(post_head(f"/v1/accounts/{account}/credits", b"Transfer-Encoding: chunked\r\n") + chunks)
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], json.loads(body)["code"]) == (413, "close", "payload_too_large")
    assert served.server.admission.buffered == 0
    writer.close()


@served_test()
async def test_two_authorization_headers_are_a_bad_request(served: Served) -> None:
    account = await funded_account(served)
    reader, writer = await served.connect()
    raw = json.dumps({"id": "two", "amount": 1}).encode()
    writer.write(
        post_head(
            f"/v1/accounts/{account}/credits", b"Authorization: Bearer other\r\nContent-Length: %d\r\n" % len(raw)
        )
        + raw
    )
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"]) == (400, "close")
    assert "Authorization" in json.loads(body)["detail"]
    assert await closed_by_server(reader)
    writer.close()
    assert await balance(served, account) == 1_000


@served_test()
async def test_upgrade_is_ignored_the_request_answered_then_the_connection_closed(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(get("/healthz", b"Upgrade: websocket\r\nConnection: Upgrade\r\n") + b"\x81\x05hello")
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], json.loads(body)) == (200, "close", {"status": "ok"})
    assert await closed_by_server(reader)
    writer.close()


@served_test()
async def test_header_limit_holds_on_the_total_of_many_small_fields_in_one_write(served: Served) -> None:
    fields = b"".join(b"X-F%d: %b\r\n" % (i, b"v" * 30) for i in range(2 * HEAD_BYTES_MAX // 40))
    status, headers, _ = await ask(served, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert (status, headers["connection"]) == (431, "close")


@served_test(limits=HttpLimits(head_timeout_s=0.3))
async def test_a_head_that_trickles_in_meets_its_deadline(served: Served) -> None:
    reader, writer = await served.connect()
    head = get("/healthz")
    answer = asyncio.ensure_future(read_response(reader))
    for byte in head[:-2]:  # one byte every 50 ms: each would reset an idle timer, never the deadline
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    status, headers, body = await answer
    assert (status, headers["connection"], json.loads(body)["code"]) == (408, "close", "request_timeout")
    writer.close()


@served_test(limits=HttpLimits(connections_max=3))
async def test_connections_beyond_the_cap_are_refused_at_once_and_counted(served: Served) -> None:
    held = [await served.connect() for _ in range(3)]
    await asyncio.sleep(0.05)
    reader, writer = await served.connect()
    status, headers, body = await read_response(reader)  # without sending anything
    assert (status, headers["retry-after"], json.loads(body)["code"]) == (503, "1", "unavailable")
    assert served.server.refused_count == 1
    writer.close()
    for held_reader, held_writer in held:  # those within the cap are served
        held_writer.write(get("/healthz"))
        assert (await read_response(held_reader))[0] == 200
        held_writer.close()


def _alive(kind: type) -> int:
    return sum(1 for thing in gc.get_objects() if type(thing) is kind)


@served_test()
async def test_a_closed_connection_is_freed_without_the_cycle_collector(served: Served) -> None:
    """With the collector off, a connection closed mid-body must be gone (and its body with it):
    an object kept only by a reference cycle stays in gc.get_objects() until a collection."""
    before = _alive(HttpProtocol)
    reader, writer = await served.connect()
    writer.write(batch_head(4 * 1024 * 1024) + b"x" * (1024 * 1024))
    await writer.drain()
    for _ in range(200):
        if served.server.admission.buffered and served.server.connections:
            break
        await asyncio.sleep(0.01)
    assert _alive(HttpProtocol) == before + 1
    gc.disable()
    try:
        writer.close()
        for _ in range(300):
            if not served.server.connections and _alive(HttpProtocol) == before:
                break
            await asyncio.sleep(0.01)
        assert _alive(HttpProtocol) == before, "a closed connection waits for the cycle collector"
    finally:
        gc.enable()
    assert served.server.admission.buffered == 0 and not served.server.admission.arriving


@served_test(limits=HttpLimits(head_timeout_s=0.3))
async def test_a_connection_that_never_sends_is_closed_at_the_head_deadline(served: Served) -> None:
    reader, writer = await served.connect()
    assert await closed_by_server(reader)  # well before the 75 s keep-alive timeout
    writer.close()
