"""`balance-service demo` end to end: a subprocess, a short mix, exit code 0 and the PASS line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("balance-service")
    return [str(script)] if script.exists() else [sys.executable, "-m", "balance"]


@pytest.mark.parametrize("runs", [1, 2], ids=["fresh", "again-on-the-same-data"])
def test_demo_runs_the_mix_and_passes_its_invariant_check(tmp_path: Path, runs: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCE_")}
    for _ in range(runs):
        done = subprocess.run(
            [*demo_command(), "demo", "--operations", "300", "--data-dir", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "Invariant check: PASS" in output, output
        assert "FAIL" not in output, output
        assert "300/300" in output, output  # the progress bar ran to the end
        assert "commands per commit" in output and "operations/s" in output, output
        for name in ("Partner A", "Partner B", "Sub-partner A1", "Provider B2", "User A1.1", "SYS-0-funding-USD"):
            assert name in output, output
    assert sorted(p.name for p in tmp_path.glob("shard-*.db")) == ["shard-0.db", "shard-1.db"]


def test_demo_on_a_fresh_temporary_directory_by_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCE_")}
    done = subprocess.run(
        [*demo_command(), "demo", "--operations", "50"], env=env, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Invariant check: PASS" in done.stdout
    assert not list(tmp_path.iterdir()), "the demo wrote into the working directory"
