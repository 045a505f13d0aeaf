"""Micro-benchmark of the body checks (``balance.api.strict_json``) next to msgspec's decode.

.venv/bin/python tools/bench_strict_json.py
"""

from __future__ import annotations

import timeit

import msgspec

from balance.api import strict_json

BODIES = {
    "credit": b'{"id":"op-123456","amount":1500,"description":"coffee","metadata":{"order":"A-1"}}',
    "hold": b'{"id":"h-1","amount":100,"expires_in_s":60}',
    "capture": b'{"amount":5}',
    "batch op": b'{"op":"credit","account_id":"US-0-9f2c4e1a0b3d5c6e","id":"op-1","amount":1}',
}


def main() -> None:
    n = 200_000
    for name, body in BODIES.items():
        check = min(timeit.repeat(lambda body=body: strict_json.problem_of(body), number=n, repeat=5)) / n * 1e6
        decode = min(timeit.repeat(lambda body=body: msgspec.json.decode(body), number=n, repeat=5)) / n * 1e6
        print(f"{name:9} {len(body):3} B: check {check:.2f} us, msgspec generic decode {decode:.2f} us")


if __name__ == "__main__":
    main()
