"""MariaDB's small batches render their rows as SQL text by hand (``storage/sqltext.py``):
plain text as it is, anything that needs escaping by the driver. The round trip through a
real server is in ``tests/integration/test_sql_literals.py``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balance.storage.sqltext import literal, row_values


def escaped(value: Any) -> str:
    return f"<escaped {value!r}>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (-(2**63), str(-(2**63))),
        (None, "NULL"),
        (b"", "''"),
        (b"\x00'\\\xff", "X'00275cff'"),
        ("acc-1", "'acc-1'"),
        ('ünïcødé ☃ "x" ; -- \n', "'ünïcødé ☃ \"x\" ; -- \n'"),
        ("O'Brien", '<escaped "O\'Brien">'),
        ("back\\slash", "<escaped 'back\\\\slash'>"),
        ("nul\x00", "<escaped 'nul\\x00'>"),
        (True, "<escaped True>"),  # a bool is not an int here: the driver decides
        (1.5, "<escaped 1.5>"),
    ],
)
def test_each_kind_of_value(value: Any, expected: str) -> None:
    assert literal(value, escaped) == expected


@given(st.text())
def test_text_goes_as_it_is_only_without_a_quote_backslash_or_nul(text: str) -> None:
    rendered = literal(text, escaped)
    if any(c in text for c in "'\\\x00"):
        assert rendered == escaped(text)
    else:
        assert rendered == f"'{text}'"


def test_a_row_is_its_literals_in_parentheses() -> None:
    assert row_values((1, "a", None, b"\x01", "it's"), escaped) == "(1,'a',NULL,X'01',<escaped \"it's\">)"
    assert row_values((), escaped) == "()"
