"""The bench's CPU accounting (how full the machine was during a row), on the real /proc."""

from __future__ import annotations

import time

import pytest

from balance.bench.naive import CpuMeter


def test_the_cpu_meter_counts_this_process_in_the_machine_s_busy_time() -> None:
    """The machine's figure includes every process: a run that leaves cores idle shows it."""
    meter = CpuMeter(server=False)
    meter.start()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    deadline = cpu_start + 0.3
    while time.process_time() < deadline:  # busy: this process's CPU, on one core
        pass
    cpu = meter.stop()
    # What this process got of a core, measured here (a loaded machine gives it less than all of one).
    share = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    assert cpu["client_cpu"] == pytest.approx(share, rel=0.25)
    assert cpu["machine_cpu"] >= cpu["client_cpu"] * 0.9  # (the machine's ticks are coarser)
    # The rest of the machine: what it measured beyond this process (never negative by construction).
    rest = max(0.0, cpu["machine_cpu"] - cpu["client_cpu"] - cpu.get("server_cpu", 0.0))
    assert cpu["other_cpu"] == pytest.approx(rest, abs=1e-9) and cpu["other_cpu"] <= cpu["machine_cpu"]
