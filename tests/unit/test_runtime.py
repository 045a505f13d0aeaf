"""Process settings: the GC thresholds and the GIL switch interval (see engine/runtime.py), and
the holds checkpoint interval."""

from __future__ import annotations

import gc
import sys

import pytest

from balance.bootstrap import build_service
from balance.config import Settings
from balance.engine.runtime import GC_THRESHOLDS, SWITCH_INTERVAL_MS, gc_thresholds, switch_interval_ms, tuned


def test_building_the_service_raises_the_gc_thresholds_and_shortens_the_switch_interval(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = gc.get_threshold(), sys.getswitchinterval()
    try:
        gc.set_threshold(700, 10, 10)
        sys.setswitchinterval(0.005)
        build_service(Settings.from_env({"BALANCE_DATA_DIR": str(tmp_path)}))
        assert gc.get_threshold() == GC_THRESHOLDS
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_MS / 1000)
    finally:
        gc.set_threshold(*before[0])
        sys.setswitchinterval(before[1])


def test_the_bench_tunes_its_own_process_only_while_the_engine_runs() -> None:
    before = gc.get_threshold(), sys.getswitchinterval()
    with tuned():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_MS / 1000)
    assert (gc.get_threshold(), sys.getswitchinterval()) == before


def test_the_switch_interval_can_be_set_from_the_environment() -> None:
    assert switch_interval_ms({}) == SWITCH_INTERVAL_MS == 0.5
    assert switch_interval_ms({"BALANCE_GIL_SWITCH_MS": "5"}) == 5.0
    for bad in ("0", "-1", "abc", "101", "nan"):
        with pytest.raises(ValueError):
            switch_interval_ms({"BALANCE_GIL_SWITCH_MS": bad})


def test_the_thresholds_can_be_set_from_the_environment() -> None:
    assert gc_thresholds({}) == GC_THRESHOLDS
    assert gc_thresholds({"BALANCE_GC_THRESHOLDS": "700,10,10"}) == (700, 10, 10)
    for bad in ("700,10", "a,b,c", "700,-1,10"):
        try:
            gc_thresholds({"BALANCE_GC_THRESHOLDS": bad})
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_the_holds_checkpoint_interval_comes_from_the_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"BALANCE_DATA_DIR": str(tmp_path), "BALANCE_SHARDS": "2"}
    assert [e.checkpoint_interval_s for e in build_service(Settings.from_env(env)).engines] == [2.0, 2.0]
    service = build_service(Settings.from_env({**env, "BALANCE_CHECKPOINT_INTERVAL_S": "0.5"}))
    assert [e.checkpoint_interval_s for e in service.engines] == [0.5, 0.5]
    for bad in ("-1", "abc", "3601"):
        try:
            Settings.from_env({**env, "BALANCE_CHECKPOINT_INTERVAL_S": bad})
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_the_http_server_comes_from_the_environment() -> None:
    assert Settings.from_env({}).http_server == "builtin"
    assert Settings.from_env({"BALANCE_HTTP_SERVER": ""}).http_server == "builtin"  # set but empty: the default
    assert Settings.from_env({"BALANCE_HTTP_SERVER": "uvicorn"}).http_server == "uvicorn"
    for bad in ("granian", "Builtin"):
        try:
            Settings.from_env({"BALANCE_HTTP_SERVER": bad})
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
