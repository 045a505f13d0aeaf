"""``balance-service run`` as a real process under hostile clients (docs/limits.md): memory a
client can pin, many slow clients, and clear answers at start and stop."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_process import free_port, start_ready

ADMIN_KEY = "limits-admin"
MIB = 1024 * 1024


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert found is not None
        return int(found.group(1)) / 1024

    def metric(self, name: str, labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def start(tmp_path: Path, env: dict[str, str] | None = None, nofile: int | None = None) -> Server:
    port = free_port()
    full = {
        **os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": ADMIN_KEY,
        "BALANCE_DATA_DIR": str(tmp_path / "data"), **(env or {}),
    }  # fmt: skip
    full.pop("BALANCE_DB_URL", None)
    log = tmp_path / "server.log"

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc, _ = start_ready(full, log, preexec_fn=limit_files)
    return Server(proc, port, log)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


# ---- 1. memory a client can pin ---------------------------------------------------------------


async def _announce_and_abandon(port: int, key: str | None) -> None:
    """Announce a 16 MiB batch, send 15 MiB of it (as far as the server lets), and leave."""
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/batch HTTP/1.1\r\nHost: t\r\n%bContent-Length: %d\r\n\r\n" % (auth, 16 * MIB))
    chunk = b"x" * MIB
    try:
        for _ in range(15):
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 10)
    except (ConnectionError, TimeoutError):
        pass
    writer.transport.abort()


def _attack(port: int, key: str | None) -> None:
    async def round_() -> None:
        await asyncio.gather(*(_announce_and_abandon(port, key) for _ in range(40)))

    asyncio.run(round_())


def _settled_rss(server: Server) -> float:
    time.sleep(2.5)  # refused connections linger up to 2 s before they close
    return server.rss_mib()


@pytest.mark.parametrize("key", [None, ADMIN_KEY], ids=["anonymous", "valid-key"])
def test_abandoned_large_bodies_do_not_grow_the_server(tmp_path: Path, server_factory: list[Server],
                                                       key: str | None) -> None:  # fmt: skip
    server = start(tmp_path)
    server_factory.append(server)
    _attack(server.port, key)
    after_first = _settled_rss(server)
    for _ in range(9):
        _attack(server.port, key)
    after_tenth = _settled_rss(server)
    print(f"RSS after round 1: {after_first:.0f} MiB, after round 10: {after_tenth:.0f} MiB")
    assert after_tenth - after_first <= 32, (after_first, after_tenth)
    # Each refusal was counted; still serving.
    reason = 'reason="unauthorized"' if key is None else 'reason="unavailable"'
    assert server.metric("balance_http_refusals_total", reason) > 0
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert server.stop() == 0


# ---- 2. slow and many clients -----------------------------------------------------------------


def test_a_new_client_is_answered_with_1100_slow_senders_connected(tmp_path: Path,
                                                                  server_factory: list[Server]) -> None:  # fmt: skip
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # the test's own sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server = start(tmp_path, {"BALANCE_HTTP_HEAD_TIMEOUT_S": "3"}, nofile=1024)
    server_factory.append(server)

    async def scenario() -> tuple[int, int, list[int]]:
        slow: list[asyncio.StreamWriter] = []
        for _ in range(1100):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # ... and the rest never comes
            slow.append(writer)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)  # answered within a second
        first_status = int(head.split(b" ", 2)[1])
        assert time.monotonic() - started < 1.0
        writer.close()
        # The slow senders keep trickling; their head deadline (3 s) ends them with a 408.
        statuses = []
        for writer in slow[:20]:
            writer.write(b"X")
        await asyncio.sleep(4.5)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)
        later_status = int(head.split(b" ", 2)[1])
        writer.close()
        for writer in slow:
            writer.close()
        return first_status, later_status, statuses

    first, later, _ = asyncio.run(scenario())
    assert first in (200, 503), first  # 503: the connection cap, refused at once with Retry-After
    assert later == 200
    assert server.metric("balance_http_refusals_total", 'reason="connections"') > 0
    assert server.metric("balance_http_refusals_total", 'reason="timeout"') > 0
    assert server.stop() == 0


# ---- 5. clear answers -------------------------------------------------------------------------


def test_a_port_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": ADMIN_KEY,
               "BALANCE_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
        env.pop("BALANCE_DB_URL", None)
        done = subprocess.run([sys.executable, "-m", "balance", "run"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr.decode(), done.stderr.decode()
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_clean_stop_logs_one_line(tmp_path: Path, server_factory: list[Server], sig: signal.Signals) -> None:
    server = start(tmp_path)
    server_factory.append(server)
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=20) == 0
    text = server.log.read_text()
    stopped = [line for line in text.splitlines() if "stopped" in line]
    assert len(stopped) == 1 and sig.name in stopped[0], text
    assert "Traceback" not in text
