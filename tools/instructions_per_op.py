"""CPU instructions per operation, counted by callgrind: a figure the machine's load does not move.

    .venv/bin/python tools/instructions_per_op.py batch  CHECKOUT [CHECKOUT ...]
    .venv/bin/python tools/instructions_per_op.py single CHECKOUT [CHECKOUT ...]

Each CHECKOUT is a directory with its own built ``.venv`` (e.g. this one and a worktree of an
earlier commit: ``git worktree add /work/base 7048f25``). ``batch`` runs that checkout's
``tools/profile_batch.py sqlite 1000 N`` (in process: the API, the engine and SQLite, no
socket) for N = 4 and 24 requests; ``single`` runs its server (``python -m balance run``,
SQLite) under callgrind with wrk sending single hold-then-settle requests for 1 s and for
20 s. The difference between the two runs, divided by the difference in operations, is the
cost of one operation without the start and the stop. Throughput figures on this two-core
machine move by 10% with the neighbours' load; instruction counts move by well under 1%.
Instructions are not time (a cache miss or an fdatasync costs none), so this complements
``tools/side_by_side.py``, it does not replace it. Needs valgrind and wrk (Debian packages).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from balance.bench import wrk

KEY = "instructions-per-op-admin-key-0123456789"
_REFS = re.compile(rb"I\s+refs:\s+([\d,]+)")


def _refs(stderr: bytes) -> int:
    found = _REFS.search(stderr)
    if found is None:
        raise RuntimeError(f"no callgrind total in: {stderr[-400:]!r}")
    return int(found.group(1).replace(b",", b""))


def _callgrind(checkout: Path, args: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(checkout / ".venv/bin/python"), *args]


def batch(checkout: Path) -> float:
    totals = {}
    for requests in (4, 24):
        done = subprocess.run(
            _callgrind(checkout, ["tools/profile_batch.py", "sqlite", "1000", str(requests)]),
            cwd=checkout, capture_output=True, check=True,
        )  # fmt: skip
        totals[requests] = _refs(done.stderr)
    return (totals[24] - totals[4]) / (20 * 1000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _single_run(checkout: Path, seconds: int) -> tuple[int, int]:
    """(instructions of the server's whole life, operations answered)."""
    with tempfile.TemporaryDirectory() as data:
        port = _free_port()
        env = {**os.environ, "BALANCE_DATA_DIR": data, "BALANCE_PORT": str(port), "BALANCE_ADMIN_KEY": KEY}
        server = subprocess.Popen(
            _callgrind(checkout, ["-m", "balance", "run"]), cwd=checkout, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {KEY}"}
        try:
            for _ in range(1200):
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            account = httpx.post(
                f"{url}/v1/accounts", headers=headers, json={"kind": "partner", "region": "US", "currency": "USD"},
                timeout=60,
            ).json()["id"]  # fmt: skip
            httpx.post(
                f"{url}/v1/accounts/{account}/credits", headers=headers, json={"id": "fund", "amount": 10**12},
                timeout=60,
            ).raise_for_status()  # fmt: skip
            result = wrk.run_wrk(
                url, KEY, [account], mix=wrk.HOLD_THEN_SETTLE, clients=16, duration_s=seconds, tag=f"i{port}"
            )
        finally:
            server.send_signal(signal.SIGINT)
            _, stderr = server.communicate(timeout=600)
        return _refs(stderr), result.requests + 2


def single(checkout: Path) -> float:
    short_refs, short_ops = _single_run(checkout, 1)
    long_refs, long_ops = _single_run(checkout, 20)
    return (long_refs - short_refs) / (long_ops - short_ops)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("batch", "single"):
        raise SystemExit(__doc__)
    measure = batch if argv[0] == "batch" else single
    for checkout in argv[1:]:
        per_op = measure(Path(checkout).resolve())
        print(f"{argv[0]}  {checkout}: {per_op:,.0f} instructions per operation", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
