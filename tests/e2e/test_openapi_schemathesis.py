"""schemathesis (pinned in requirements-dev.txt) against the OpenAPI document a real server
process serves: every phase (examples, coverage, fuzzing, stateful through the document's
links), every check (``--checks all``, two widened with their reasons in
``schemathesis_hooks.py``), zero failures, the run capped at five minutes.

The seed comes from ``BALANCE_SCHEMATHESIS_SEED`` when set (random otherwise) and every failure
prints it: ``BALANCE_SCHEMATHESIS_SEED=<seed> pytest tests/e2e/test_openapi_schemathesis.py``
replays the run. Afterwards the server stops cleanly and starts again: recovery checks every
invariant (each currency sums to zero, reserved equals the pending holds) before it serves.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from service_process import free_port, start_ready

HERE = Path(__file__).parent
ADMIN_KEY = "schemathesis-admin"
RUN_TIMEOUT_S = 300
EXAMPLES_PER_OPERATION = 30


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ, "BALANCE_HOST": "127.0.0.1", "BALANCE_PORT": str(free_port()), "BALANCE_ADMIN_KEY": ADMIN_KEY,
        "BALANCE_DATA_DIR": str(data_dir), "BALANCE_SHARDS": "2",
    }  # fmt: skip
    env.pop("BALANCE_DB_URL", None)
    return start_ready(env, log)


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_schemathesis_finds_nothing_against_the_served_document(tmp_path: Path) -> None:
    seed = int(os.environ.get("BALANCE_SCHEMATHESIS_SEED") or random.randrange(2**32))
    log, data = tmp_path / "server.log", tmp_path / "data"
    proc, url = start_server(data, log)
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{url}/openapi.json", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(seed), "--workers", "1",
        "--header", f"Authorization: Bearer {ADMIN_KEY}", "--request-timeout", "30",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "schemathesis_hooks.py"), "NO_COLOR": "1"}
    started = time.monotonic()
    try:
        try:
            run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace")
            raise AssertionError(f"seed {seed}: schemathesis ran past {RUN_TIMEOUT_S} s\n{output[-20000:]}") from None
        output = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
        elapsed = time.monotonic() - started
        print(f"seed {seed}, {elapsed:.0f} s\n{output[-3000:]}")
        assert run.returncode == 0, f"seed {seed} (BALANCE_SCHEMATHESIS_SEED={seed} replays it)\n{output[-30000:]}"
        assert "No issues found" in output or " passed" in output, f"seed {seed}\n{output[-30000:]}"
    finally:
        code = stop_server(proc)
    assert code == 0, f"seed {seed}: the server did not stop cleanly\n{log.read_text()[-5000:]}"
    assert "Traceback" not in log.read_text(), f"seed {seed}\n{log.read_text()[-10000:]}"
    proc, url = start_server(data, log)  # ready only once recovery has checked every invariant (else exit 70)
    assert stop_server(proc) == 0
