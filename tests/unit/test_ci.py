"""``CI`` is read as any true value: a pipeline that sets CI=1 must not go green on skips."""

from __future__ import annotations

import pytest

from ci import in_ci


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "Yes", "on", " true "])
def test_true_values_mean_ci(value: str) -> None:
    assert in_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_other_values_do_not(value: str) -> None:
    assert not in_ci({"CI": value})
    assert not in_ci({})
