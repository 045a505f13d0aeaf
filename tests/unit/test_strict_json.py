"""The body checks of ``strict_json``: a key twice in one object, nesting too deep."""

from __future__ import annotations

import pytest

from balance.api import strict_json as sj

TWICE = [
    b'{"amount":1,"amount":999999}',
    b'{"amount" : 1 , "amount":2}',
    b'{"amount":1,"\\u0061mount":2}',
    b'{"m":{"k":{"a":1,"a":2}}}',
    b'{"ops":[{"x":1},{"y":2,"y":3}]}',
    b'{"":1,"":2}',
]
ONCE = [
    b'{"id":"x","amount":1}',
    b'{"id":"amount","amount":1}',
    b'{"a":{"a":{"a":1}}}',
    b'{"a":"x\\"y","b":"\\":"}',
    b'{"s":"\\"a\\":1,\\"a\\":2"}',
    b'[{"a":1},{"a":2}]',
    b"{}",
]


@pytest.mark.parametrize("body", TWICE)
def test_a_key_twice_in_one_object_is_found(body: bytes) -> None:
    assert sj.problem_of(body) == "a JSON object has the same key twice"


@pytest.mark.parametrize("body", ONCE)
def test_equal_keys_in_different_objects_and_equal_strings_are_not_duplicates(body: bytes) -> None:
    assert sj.problem_of(body) is None


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert sj.depth(b'{"m":"[[[{{{","x":[[1]]}') == 3
    inside_strings = b'{"m":"' + b"[" * 100 + b'"}'
    assert sj.problem_of(inside_strings) is None
    limit = b"[" * sj.DEPTH_MAX + b"]" * sj.DEPTH_MAX
    assert sj.problem_of(limit) is None
    assert sj.problem_of(b"[" + limit + b"]") == f"JSON nested deeper than {sj.DEPTH_MAX} levels"


def test_deep_batch_elements_are_blanked_alone() -> None:
    good = b'{"op":"credit","metadata":{"a":[1,{"b":"]]]"}]}}'
    deep = b'{"op":"credit","metadata":' + b"[" * 3000 + b"]" * 3000 + b"}"
    body = b'{"operations":[' + good + b"," + deep + b"," + good + b"]}"
    blanked, indices = sj.blank_deep_elements(body)
    assert indices == {1}
    assert blanked == b'{"operations":[' + good + b",null," + good + b"]}"


def test_the_batch_skeleton_finds_its_own_key_twice() -> None:
    op = b'{"op":"credit","amount":1}'
    assert sj.skeleton_problem(b'{"operations":[' + op + b"," + op + b"]}", [op, op]) is None
    twice = b'{"operations":[' + op + b'],"operations":[' + op + b"]}"
    assert sj.skeleton_problem(twice, [op]) == "a JSON object has the same key twice"
