"""One AMQP 0-9-1 connection with one publisher-confirm channel, as the relay uses it: pages of
frames written, confirms read. No client library on the hot path.

Through aio-pika (aiormq) every confirm the broker sends (one per message when no queue is
bound: RabbitMQ then acks each singly) was read as a frame object, decoded by pamqp and
resolved into a future of its own: ~20 µs of the relay's CPU per event (BENCHMARKS.md, "Relay
cost"). Here the opening handshake goes through pamqp (a few frames per connection) and,
once open, ``data_received`` reads acks straight from the bytes (a basic.ack is 21 bytes) and
keeps one number, the highest delivery tag below which every message was confirmed; a page's
one future resolves when that number passes its last tag. A nack, a channel or connection
close from the broker, a lost connection or a confirm overdue fails the link: the relay then
sends again from its cursor (at least once).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from typing import cast
from urllib.parse import unquote, urlsplit

from pamqp import commands, frame, heartbeat
from pamqp.base import Frame

from balance.relay.sink import SinkError

_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_METHOD_ID = struct.Struct(">HH")
_ACK = struct.Struct(">QB")  # delivery tag, multiple
_ACK_FRAME = struct.Struct(">BHIHHQBB")  # a whole basic.ack frame: head, class, method, tag, multiple, frame end
_BASIC_ACK, _BASIC_NACK = (60, 80), (60, 120)
_METHOD, _HEARTBEAT = 1, 8
_HEARTBEAT_FRAME = frame.marshal(heartbeat.Heartbeat(), 0)
CHANNEL = 1
FRAME_MAX = 131_072


class LinkError(SinkError):
    """The connection is unusable (refused, closed by the broker, lost, a nack): open a new one."""


class AmqpLink(asyncio.Protocol):
    def __init__(self) -> None:
        self.frame_max = FRAME_MAX
        self.delivery_tag = 0  # the last one given out
        self.confirmed = 0  # every delivery tag up to here is confirmed
        self._singles: set[int] = set()  # tags confirmed out of order, above ``confirmed``
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()  # (a page's last tag, its future)
        self._buffer = bytearray()
        self._opening: asyncio.Queue[Frame | BaseException] | None = asyncio.Queue()
        self._transport: asyncio.Transport | None = None
        self._error: LinkError | None = None
        self._writable: asyncio.Future[None] | None = None
        self._heartbeat_s = 0
        self._heard_at = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, exchange: str, *, timeout: float = 5.0) -> AmqpLink:
        """Connect, log in, open a confirm channel and declare ``exchange`` (durable topic)."""
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise LinkError(f"not an AMQP URL: {parts.scheme}://")
        loop = asyncio.get_running_loop()
        link = cls()
        async with asyncio.timeout(timeout):
            try:
                await loop.create_connection(
                    lambda: link, parts.hostname or "localhost", parts.port or (5671 if parts.scheme == "amqps" else 5672),
                    ssl=parts.scheme == "amqps",
                )  # fmt: skip
            except OSError as exc:
                raise LinkError(f"cannot connect: {exc}") from exc
            try:
                await link._handshake(
                    unquote(parts.username or "guest"), unquote(parts.password or "guest"),
                    unquote(parts.path[1:]) if len(parts.path) > 1 else "/", exchange,
                )  # fmt: skip
            except BaseException:
                link.abort()
                raise
        return link

    async def _handshake(self, user: str, password: str, vhost: str, exchange: str) -> None:
        assert self._transport is not None
        self._transport.write(_PROTOCOL_HEADER)
        await self._expect(commands.Connection.Start)
        self._send(0, commands.Connection.StartOk(
            client_properties={"product": "balance-service relay", "capabilities": {"publisher_confirms": True, "authentication_failure_close": True}},
            mechanism="PLAIN", response=f"\0{user}\0{password}",
        ))  # fmt: skip
        tune = await self._expect(commands.Connection.Tune)
        assert isinstance(tune, commands.Connection.Tune)
        self.frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        self._heartbeat_s = tune.heartbeat or 0
        self._send(0, commands.Connection.TuneOk(channel_max=1, frame_max=self.frame_max, heartbeat=self._heartbeat_s))
        self._send(0, commands.Connection.Open(virtual_host=vhost))
        await self._expect(commands.Connection.OpenOk)
        self._send(CHANNEL, commands.Channel.Open())
        await self._expect(commands.Channel.OpenOk)
        self._send(CHANNEL, commands.Confirm.Select())
        await self._expect(commands.Confirm.SelectOk)
        self._send(CHANNEL, commands.Exchange.Declare(exchange=exchange, exchange_type="topic", durable=True))
        await self._expect(commands.Exchange.DeclareOk)
        self._opening = None  # from here on ``data_received`` reads confirms itself
        if self._buffer:
            self._read_confirms()
        if self._heartbeat_s:
            self._timer = asyncio.get_running_loop().call_later(self._heartbeat_s / 2, self._beat)

    def _send(self, channel: int, method: Frame) -> None:
        assert self._transport is not None
        self._transport.write(frame.marshal(method, channel))

    async def _expect(self, kind: type[Frame]) -> Frame:
        assert self._opening is not None
        got = await self._opening.get()
        if isinstance(got, BaseException):
            raise got
        if not isinstance(got, kind):
            raise LinkError(f"expected {kind.__name__}, the broker sent {got!r}")
        return got

    # ---- publishing ---------------------------------------------------------------------

    async def write(self, data: bytes, messages: int, timeout: float) -> asyncio.Future[None]:
        """``data`` (the frames of ``messages`` messages, delivery tags in order after those
        written before) in one write; returns what resolves once the broker confirmed them all
        (or fails with LinkError; after ``timeout`` seconds too)."""
        if self._error is not None:
            raise self._error
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.delivery_tag += messages
        self._waiters.append((self.delivery_tag, done))
        self._transport.write(data)
        overdue = loop.call_later(timeout, self._overdue, done, timeout)
        done.add_done_callback(lambda _: overdue.cancel())
        if self._writable is not None:  # the socket's buffer is full: wait until it drains (or the link fails)
            await asyncio.shield(self._writable)
            if self._error is not None:
                raise self._error
        return done

    def _overdue(self, done: asyncio.Future[None], timeout: float) -> None:
        if not done.done():
            self._fail(LinkError(f"no confirmation within {timeout:.0f}s"))

    # ---- reading ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._heard_at = time.monotonic()
        self._buffer += data
        if self._opening is not None:
            self._read_opening()
        else:
            self._read_confirms()

    def _read_opening(self) -> None:
        assert self._opening is not None
        buffer = self._buffer
        while len(buffer) >= 8 and len(buffer) >= 8 + _HEAD.unpack_from(buffer)[2]:
            if buffer.startswith(b"AMQP"):  # the broker's own protocol header: it does not speak 0-9-1
                self._fail(LinkError(f"the broker refused the protocol: {bytes(buffer[:8])!r}"))
                return
            size = 8 + _HEAD.unpack_from(buffer)[2]
            try:
                _, _channel, decoded = frame.unmarshal(bytes(buffer[:size]))
            except Exception as exc:  # noqa: BLE001
                self._fail(LinkError(f"undecodable frame from the broker: {exc!r}"))
                return
            del buffer[:size]
            if isinstance(decoded, commands.Connection.Close | commands.Channel.Close):
                self._fail(LinkError(f"the broker closed: {decoded.reply_code} {decoded.reply_text}"))
                return
            if isinstance(decoded, Frame):  # a method (a heartbeat is none)
                self._opening.put_nowait(decoded)

    def _read_confirms(self) -> None:
        buffer, at, end = self._buffer, 0, len(self._buffer)
        ack_frame = _ACK_FRAME.unpack_from
        while end - at >= 8:
            if end - at >= 21:  # the common case: a whole basic.ack frame, read in one unpack
                kind, _channel, size, method_class, method_id, tag, multiple, _end = ack_frame(buffer, at)
                if kind == _METHOD and size == 13 and method_class == 60 and method_id == 80:
                    if not multiple and tag == self.confirmed + 1 and not self._singles:
                        self.confirmed = tag
                    else:
                        self._ack(tag, multiple)
                    at += 21
                    continue
            kind, _channel, size = _HEAD.unpack_from(buffer, at)
            if end - at < size + 8:
                break
            if kind == _METHOD:
                method = _METHOD_ID.unpack_from(buffer, at + 7)
                if method == _BASIC_ACK:
                    tag, multiple = _ACK.unpack_from(buffer, at + 11)
                    self._ack(tag, multiple)
                elif method == _BASIC_NACK:
                    tag, _ = _ACK.unpack_from(buffer, at + 11)
                    self._fail(LinkError(f"the broker refused (nack) delivery tag {tag}"))
                    return
                else:
                    self._other(bytes(buffer[at : at + size + 8]))
                    if self._error is not None:
                        return
            elif kind != _HEARTBEAT:
                self._fail(LinkError(f"unexpected frame type {kind} from the broker"))
                return
            at += size + 8
        if at:
            del buffer[:at]
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.confirmed:
            done = waiters.popleft()[1]
            if not done.done():
                done.set_result(None)

    def _ack(self, tag: int, multiple: int) -> None:
        if multiple:
            if tag > self.confirmed:
                self.confirmed = tag
                if self._singles:
                    self._singles = {t for t in self._singles if t > tag}
        elif tag == self.confirmed + 1:
            self.confirmed = tag
        elif tag > self.confirmed:
            self._singles.add(tag)
        singles = self._singles
        while singles and self.confirmed + 1 in singles:
            self.confirmed += 1
            singles.discard(self.confirmed)

    def _other(self, data: bytes) -> None:
        """A method frame other than a confirm: the broker closing (or something not expected)."""
        try:
            _, _, decoded = frame.unmarshal(data)
        except Exception as exc:  # noqa: BLE001
            self._fail(LinkError(f"undecodable frame from the broker: {exc!r}"))
            return
        if isinstance(decoded, commands.Connection.Close | commands.Channel.Close):
            self._fail(LinkError(f"the broker closed: {decoded.reply_code} {decoded.reply_text}"))
        elif isinstance(decoded, commands.Connection.Blocked):
            pass  # publishes wait in the socket (the confirm timeout bounds the wait)
        elif not isinstance(decoded, commands.Connection.Unblocked | commands.Basic.Return):
            self._fail(LinkError(f"unexpected from the broker: {decoded!r}"))

    # ---- the connection's life ----------------------------------------------------------

    def _beat(self) -> None:
        """Every half heartbeat interval: a heartbeat out; a broker silent for two intervals is gone."""
        if self._error is not None or self._transport is None:
            return
        if time.monotonic() - self._heard_at > 2 * self._heartbeat_s:
            self._fail(LinkError(f"no word from the broker in {2 * self._heartbeat_s}s"))
            return
        self._transport.write(_HEARTBEAT_FRAME)
        self._timer = asyncio.get_running_loop().call_later(self._heartbeat_s / 2, self._beat)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LinkError(f"connection lost: {exc!r}" if exc else "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: LinkError) -> None:
        """Everything waiting fails with ``error``, and the connection is closed."""
        if self._error is None:
            self._error = error
        if self._opening is not None:
            self._opening.put_nowait(error)
        while self._waiters:
            done = self._waiters.popleft()[1]
            if not done.done():
                done.set_exception(error)
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)  # the writer sees ``_error``
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def abort(self) -> None:
        self._fail(LinkError("closed"))

    async def close(self, timeout: float = 1.0) -> None:
        """Close politely (connection.close, then the socket); what is unconfirmed fails."""
        transport = self._transport
        if transport is not None and self._error is None and not transport.is_closing():
            self._send(
                0, commands.Connection.Close(reply_code=200, reply_text="relay stopping", class_id=0, method_id=0)
            )
            transport.close()
        self.abort()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        except TimeoutError:
            pass

    @property
    def usable(self) -> bool:
        return self._error is None
