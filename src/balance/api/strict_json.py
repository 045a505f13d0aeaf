"""Bodies that mean one thing: no key twice in one object, no nesting deeper than a body needs.

msgspec (which decodes the bodies) keeps the last of two equal keys, so ``{"amount":1,"amount":999}``
would credit 999 while a proxy or log reader sees 1; and it decodes nesting by recursion, so a
body nested thousands of levels deep raised ``RecursionError`` (a 500). Both are checked here,
before decoding, at about a microsecond for a small body:

- keys: with no escape in the body, splitting it at each ``"`` puts every string at an odd
  index; if no string's text repeats anywhere (keys and values alike), no object can hold a key
  twice. Otherwise (a value equal to a key, nested objects reusing a name, escapes such as
  ``"\\u0061"`` for ``"a"``) the exact check parses the body once more, object by object.
- depth: a body with at most ``DEPTH_MAX`` opening brackets cannot nest deeper; otherwise its
  brackets outside strings are counted.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEPTH_MAX = 32  # levels of objects and arrays in one body (or one batch operation)

# Every JSON string, consumed whole (so the scan never starts inside one).
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class DuplicateKey(ValueError):
    pass


def problem_of(body: bytes) -> str | None:
    """Why ``body`` means two things (a sentence), or None."""
    if body.count(b"{") + body.count(b"[") > DEPTH_MAX and depth(body) > DEPTH_MAX:
        return f"JSON nested deeper than {DEPTH_MAX} levels"
    # ``find``, not ``in``: ``x in bytes`` first tries x as an int, and the TypeError it formats
    # and drops cost ~1,800 instructions per body (more than the search).
    if body.find(b"\\") >= 0:
        return _EXACT_PROBLEM if has_duplicate_key(body) else None
    strings = body.split(b'"')[1::2]
    if len(set(strings)) != len(strings) and has_duplicate_key(body):
        return _EXACT_PROBLEM
    return None


_EXACT_PROBLEM = "a JSON object has the same key twice"


def depth(body: bytes) -> int:
    """The deepest nesting of objects and arrays, brackets inside strings not counted."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    level = deepest = 0
    for byte in brackets:
        if byte == 0x7B or byte == 0x5B:  # { [
            level += 1
            if level > deepest:
                deepest = level
        else:
            level -= 1
    return deepest


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise DuplicateKey
    return value


def has_duplicate_key(body: bytes) -> bool:
    """The exact check (keys compared after unescaping, object by object). A body that is not
    JSON is left to the decoder, which says why."""
    try:
        json.loads(body, object_pairs_hook=_pairs)
    except DuplicateKey:
        return True
    except (ValueError, RecursionError):
        return False
    return False


_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},]')


def blank_deep_elements(body: bytes) -> tuple[bytes, set[int]]:
    """A batch body too deep for the decoder: each element of its operations array (the array
    at the second level) nested deeper than ``DEPTH_MAX`` is replaced by ``null``, so that the
    valid operations still run. The indices replaced. A slow scan, for this rare body only."""
    parts: list[bytes] = []
    blanked: set[int] = set()
    level = index = deepest = pos = 0
    start = -1
    for match in _TOKENS.finditer(body):
        char = body[match.start()]
        if char == 0x22:  # a string
            continue
        if char == 0x7B or char == 0x5B:
            level += 1
            if level == 3:
                start, deepest = match.start(), 3
            deepest = max(deepest, level)
        elif char == 0x2C:
            index += level == 2
        else:
            level -= 1
            if level == 2 and start >= 0:
                if deepest - 2 > DEPTH_MAX:
                    parts += (body[pos:start], b"null")
                    pos = match.end()
                    blanked.add(index)
                start = -1
    parts.append(body[pos:])
    return b"".join(parts), blanked


def skeleton_problem(body: bytes, elements: list[bytes]) -> str | None:
    """Why a batch body's own keys (its operations taken out, each checked on its own) mean two
    things: ``{"operations":[...],"operations":[...]}``. The body's only key is ``operations``
    (any other is refused by its schema), so a body that names it once, with no escape that
    could spell it another way, cannot hold it twice: the common case costs two scans."""
    if body.count(b'"operations"') == 1 and body.find(b"\\u") < 0:
        return None
    parts: list[bytes] = []
    pos = 0
    for element in elements:
        at = body.find(element, pos)
        if at < 0:
            return "malformed batch body"
        parts += (body[pos:at], b"0")
        pos = at + len(element)
    parts.append(body[pos:])
    try:
        json.loads(b"".join(parts), object_pairs_hook=_pairs)
    except DuplicateKey:
        return _EXACT_PROBLEM
    except (ValueError, RecursionError):
        return "malformed batch body"
    return None
