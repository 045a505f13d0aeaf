"""The bench's CPU accounting (how full the machine was during a row), on the real /proc."""

from __future__ import annotations

import time

from balance.bench.naive import CpuMeter


def test_the_cpu_meter_counts_this_process_in_the_machine_s_busy_time() -> None:
    """The machine's figure includes every process: a run that leaves cores idle shows it."""
    meter = CpuMeter(server=False)
    meter.start()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # busy: this process's CPU, on one core
        pass
    cpu = meter.stop()
    assert cpu["client_cpu"] > 0.5
    assert cpu["machine_cpu"] >= cpu["client_cpu"] * 0.9  # (the machine's ticks are coarser)
    assert cpu["other_cpu"] >= 0.0
