"""An open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, answered or not.

A closed loop (wrk, or a client that waits for its answer) sends nothing while the server
stalls, so a stall shows up as a few slow requests instead of as every request scheduled
during it. Here each request has a scheduled send time, is written at that time on a
keep-alive connection (pipelined behind others when every connection is busy), and its
latency is counted from the scheduled time: a 300 ms stall at 10,000/s costs 3,000 late
requests, as it would a gateway.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Done = Callable[[int, bytes, float], None]  # (status, body, answered at) -> None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers come back in request order (HTTP/1.1)."""

    def __init__(self, owner: OpenLoop) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: deque[tuple[float, Done | None]] = deque()  # (scheduled at, callback)
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.lost += len(self.waiting)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            at = head.find(b"content-length:")
            length = (
                int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else end]) if at >= 0 else 0
            )
            total = end + 4 + length
            if len(buffer) < total:
                return
            status = int(head[9:12])
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            scheduled, done = self.waiting.popleft()
            now = time.perf_counter()
            self.owner.record(scheduled, now, status)
            if done is not None:
                done(status, body, now)
            if not self.waiting:
                self.owner.idle.append(self)


@dataclass(slots=True)
class Samples:
    """Per answered request: scheduled send time (s since the start), latency (s), status."""

    at: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: int = 0


class OpenLoop:
    """``connections`` keep-alive connections to ``host:port``; ``send`` writes a request now,
    its latency counted from ``scheduled`` (perf_counter seconds)."""

    def __init__(self, host: str, port: int, connections: int) -> None:
        self.host, self.port, self.size = host, port, connections
        self.connections: list[_Connection] = []
        self.idle: list[_Connection] = []
        self.samples = Samples()
        self.started = 0.0
        self.recording = True
        self.lost = 0
        self._next = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
            self.connections.append(conn)
        self.idle = list(self.connections)
        self.started = time.perf_counter()

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()

    @property
    def outstanding(self) -> int:
        return sum(len(conn.waiting) for conn in self.connections)

    def send(self, request: bytes, scheduled: float, done: Done | None = None) -> None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and not conn.waiting:
                break
        else:  # every connection busy: pipeline behind the one waiting on the fewest
            self._next = (self._next + 1) % len(self.connections)
            conn = min(self.connections[self._next :] + self.connections[: self._next], key=lambda k: len(k.waiting))
        conn.waiting.append((scheduled, done))
        assert conn.transport is not None
        conn.transport.write(request)

    def record(self, scheduled: float, answered: float, status: int) -> None:
        if not self.recording:
            return
        samples = self.samples
        samples.at.append(scheduled - self.started)
        samples.latency.append(answered - scheduled)
        if status >= 300:
            samples.errors += 1

    async def drain(self, timeout_s: float) -> int:
        """Wait for the answers still due; returns how many never came."""
        deadline = time.perf_counter() + timeout_s
        while self.outstanding and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        return self.outstanding + self.lost


class Schedule:
    """Requests due at given times (a heap), sent by ``run`` as their time comes."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, bytes, Done | None]] = []
        self._count = 0

    def add(self, at: float, request: bytes, done: Done | None = None) -> None:
        self._count += 1
        heapq.heappush(self.heap, (at, self._count, request, done))

    def send_due(self, gen: OpenLoop, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            at, _, request, done = heapq.heappop(heap)
            gen.send(request, at, done)


async def run_at_rate(
    gen: OpenLoop,
    rate: float,
    duration_s: float,
    make: Callable[[int, float], tuple[bytes, Done | None]],
    schedule: Schedule | None = None,
    tick_s: float = 0.0005,
) -> float:
    """Send ``make(n, scheduled)``'s request at ``start + n / rate`` for ``duration_s``, plus what
    ``schedule`` holds as it comes due; late ticks catch up (each request keeps its own time).
    Returns the seconds the schedule ran."""
    start = time.perf_counter()
    total = int(rate * duration_s)
    n = 0
    while n < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        while n < due:
            at = start + n / rate
            request, done = make(n, at)
            gen.send(request, at, done)
            n += 1
        if schedule is not None:
            schedule.send_due(gen, now)
        await asyncio.sleep(tick_s)
    return time.perf_counter() - start


async def run_closed(
    gen: OpenLoop, duration_s: float, make: Callable[[int, float], tuple[bytes, Done | None]], depth: int = 1
) -> int:
    """The maximum rate: every connection sends its next request as soon as its answer comes
    (``depth`` in flight per connection). Returns the requests answered."""
    counter = 0
    deadline = time.perf_counter() + duration_s
    answered = 0

    def launch(conn_index: int) -> None:
        nonlocal counter
        if time.perf_counter() >= deadline:
            return
        counter += 1
        request, done = make(counter, time.perf_counter())

        def chained(status: int, body: bytes, at: float) -> None:
            nonlocal answered
            answered += 1
            if done is not None:
                done(status, body, at)
            launch(conn_index)

        conn = gen.connections[conn_index]
        conn.waiting.append((time.perf_counter(), chained))
        assert conn.transport is not None
        conn.transport.write(request)

    for index in range(len(gen.connections)):
        for _ in range(depth):
            launch(index)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await gen.drain(30)
    return answered
