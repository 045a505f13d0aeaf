"""Process settings: the GC thresholds (see engine/runtime.py) and the holds checkpoint interval."""

from __future__ import annotations

import gc

from balance.bootstrap import build_service
from balance.config import Settings
from balance.engine.runtime import GC_THRESHOLDS, gc_thresholds


def test_building_the_service_raises_the_gc_thresholds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        build_service(Settings.from_env({"BALANCE_DATA_DIR": str(tmp_path)}))
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)


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
