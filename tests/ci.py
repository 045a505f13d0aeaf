"""Whether this run is CI, where nothing may skip: a missing prerequisite fails the test."""

from __future__ import annotations

import os

import pytest

TRUE = ("1", "true", "yes", "on")


def in_ci(env: dict[str, str] | None = None) -> bool:
    """``CI`` set to a true value (1, true, yes, on; any case)."""
    return (os.environ if env is None else env).get("CI", "").strip().lower() in TRUE


def skip_or_fail(message: str) -> None:
    """Skip locally; in CI fail (a missing database or tool there is a broken pipeline)."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
