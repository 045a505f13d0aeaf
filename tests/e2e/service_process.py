"""A real service process for the tests that need one: a free port, and ``python -m balance
run`` started with the test's environment and waited for until ``/readyz`` answers 200."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ready(
    env: dict[str, str], log: Path, *, preexec_fn: Callable[[], None] | None = None, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """The process (output appended to ``log``) and its base URL, once it is ready; a process
    that exits or is not ready in time fails the test with its log."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "balance", "run"], env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )  # fmt: skip
    url = f"http://{env['BALANCE_HOST']}:{env['BALANCE_PORT']}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"not ready in {timeout_s:g} s:\n{log.read_text()}")
