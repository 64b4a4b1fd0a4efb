"""The model WebSocket: ``websockets``' connections with a leaner per-message path.

Depends on ``websockets`` only. :mod:`telewire.realtime.openai` opens every provider session with
``connect(..., create_connection=ModelConnection)``; the fake realtime server of
:mod:`telewire.testing` serves with :class:`LeanServerConnection`, so that a load test's harness
costs its core as little as the system it measures.

A call sends the model 50 small text messages a second and receives as many, so the fixed cost of
one message matters more than anything else on the connection. ``websockets`` spends most of it
outside the protocol: ``send`` enters an async context manager (an async generator per message)
and ``recv`` goes through a general assembler (futures, a queue, fragmented and streamed
messages). :class:`ModelConnection` keeps everything of ``websockets`` (handshake, protocol state
machine, frame parsing and its size limit, pings, closing, flow control) and replaces only those
two steps, when it is safe to:

* ``send`` of a ``str`` while the connection is open, no fragmented message is in progress and no
  extension is negotiated writes one text frame straight to the transport; anything else goes
  through ``websockets`` unchanged. A client masks the frame with a key from ``os.urandom`` like
  ``websockets``' own (RFC 6455 section 5.3 asks for a strong source of entropy), read 4 KiB at a
  time instead of one system call per frame.
* ``recv`` takes whole messages from a plain deque (fragments joined), pausing the socket past
  ``max_queue`` messages as ``websockets`` does. Once the connection is lost and the deque is
  empty it raises the same :class:`~websockets.exceptions.ConnectionClosed` as ``websockets``.
* Received data frames are read straight off the socket's bytes once the connection is open,
  instead of through ``websockets``' generator-based parser (about 3 µs a message). The opening
  handshake is handed to ``websockets`` up to the end of its HTTP head and never beyond, so its
  parser is always at a frame boundary with nothing buffered. Complete control frames (ping,
  pong, close) are handed to it one by one, and it keeps its own meaning of them: the pong
  answering a ping, keepalive, the closing handshake. Anything that is not a well-formed data
  frame within the size limits (reserved bits or opcodes, wrong masking, a frame or message over
  ``max_size``, a continuation out of place) and everything after a close frame goes to
  ``websockets`` from that byte on, with the fragmented-message state it needs, so it fails the
  connection with exactly its own close code and reason.

All of that leans on ``websockets``' internals (the protocol's fragment and size state, the
connection's send and queue state), which are not its public API and have moved between releases.
They are checked for once, at import (:data:`LEAN`): when one is missing, or ``TELEWIRE_LEAN_WS=0``
is set, :data:`ModelConnection` and :data:`LeanServerConnection` are ``websockets``' own stock
connection classes and everything works as it does with ``websockets`` alone, only with its
per-message cost. The lean path needs websockets 16 or later.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import deque
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the pure-Python build of websockets
    from websockets.utils import apply_mask

__all__ = ["LEAN", "LEAN_MISSING", "LeanServerConnection", "ModelConnection"]

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_OPEN = State.OPEN
_MASK_POOL = 4096  # bytes of os.urandom read at once: 1024 masking keys
_HEAD_LIMIT = 1 << 16  # past this the opening handshake is websockets' alone (it refuses it)

#: what the lean path reads or writes on ``websockets``' sans-I/O protocol object
_PROTOCOL_ATTRS = ("state", "extensions", "current_size", "reader", "max_message_size",
                   "max_fragment_size", "expect_continuation_frame")
#: what it reads on the asyncio connection (set in ``Connection.__init__``)
_CONNECTION_ATTRS = ("protocol", "loop", "send_in_progress", "max_queue_high", "max_queue_low",
                     "paused")
#: the asyncio ``Protocol`` and ``Connection`` methods it extends
_CONNECTION_METHODS = ("connection_made", "data_received", "connection_lost", "process_event",
                       "send", "recv", "drain")


def _missing_internals() -> tuple[str | None, list[str]]:
    """Find the ``websockets`` internals the lean path uses, by looking for each of them.

    Returns the name of the connection's attribute holding the exception that ended the
    connection (``connection_exc`` from websockets 17.4, ``recv_exc`` before), and what is
    missing (empty when the lean path can run).
    """
    missing = []
    major = websockets.version.version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 16:  # max_fragment_size, send_in_progress: 16.0
        missing.append(f"websockets {websockets.version.version} (the lean path needs 16 or later)")
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))  # sans-I/O: no socket, no loop
    missing += [f"Protocol.{a}" for a in _PROTOCOL_ATTRS if not hasattr(protocol, a)]
    if not isinstance(getattr(getattr(protocol, "reader", None), "buffer", None), bytearray):
        missing.append("Protocol.reader.buffer")
    if not isinstance(getattr(type(protocol), "close_exc", None), property):
        missing.append("Protocol.close_exc")
    stored = set(Connection.__init__.__code__.co_names)  # attributes __init__ sets, and more
    missing += [f"Connection.{a}" for a in _CONNECTION_ATTRS if a not in stored]
    missing += [f"Connection.{m}()" for m in _CONNECTION_METHODS
                if not callable(getattr(Connection, m, None))]
    exc_attr = next((a for a in ("connection_exc", "recv_exc") if a in stored), None)
    if exc_attr is None:
        missing.append("Connection.connection_exc")
    return exc_attr, missing


_EXC_ATTR, _MISSING = _missing_internals()

LEAN_MISSING: tuple[str, ...] = tuple(_MISSING)
"""The ``websockets`` internals the lean path needs and this installation lacks (empty when all
are there)."""

LEAN: bool = not LEAN_MISSING and os.environ.get("TELEWIRE_LEAN_WS", "1") != "0"
"""Whether :data:`ModelConnection` and :data:`LeanServerConnection` take the lean path: the
internals are all there and ``TELEWIRE_LEAN_WS=0`` does not switch it off."""


def _text_frame_head(length: int, masked: int) -> bytes:
    """FIN + text opcode, the mask bit (``masked``: 0x80 or 0) and the payload length
    (RFC 6455 section 5.2)."""
    if length < 126:
        return bytes((0x81, masked | length))
    if length < 0x10000:
        return struct.pack("!BBH", 0x81, masked | 126, length)
    return struct.pack("!BBQ", 0x81, masked | 127, length)


class _LeanPath:
    """Direct text sends and a deque of received messages, mixed into a ``websockets``
    connection class (client or server).

    ``recv(decode=None)`` returns text messages as ``str`` and binary ones as ``bytes``;
    ``decode=False`` returns ``bytes`` for both, ``decode=True`` ``str`` for both (as
    ``websockets``). One coroutine may wait in :meth:`recv` at a time.
    """

    #: client frames are masked (RFC 6455 section 5.3), server frames are not
    _masked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._inbox: deque[tuple[bool, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._reading_paused = False
        self._lost = False
        self._masks = b""
        self._mask_at = _MASK_POOL
        self._fast = False  # data frames are parsed here (see data_received)
        self._head = bytearray()  # the opening handshake's HTTP head, until its end is seen
        self._head_done = False
        self._ws_framed = False  # websockets' parser got frame bytes: it keeps the stream
        self._rest = bytearray()  # the start of an incomplete frame
        self._need = 0  # how long _rest must grow before that frame can be complete
        self._fragments_size = 0

    # -- receiving -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._fast:
            self._parse(data)
            return
        if not self._head_done:
            head = self._head
            start = len(head)
            head += data
            end = head.find(b"\r\n\r\n", max(0, start - 3))
            if end < 0:
                if len(head) > _HEAD_LIMIT:  # websockets refuses it; stop copying
                    self._head_done = self._ws_framed = True
                    self._head = bytearray()
                super().data_received(data)
                return
            cut = end + 4 - start  # a handshake has no body (RFC 6455 section 4)
            self._head_done = True
            self._head = bytearray()
            super().data_received(data[:cut])
            data = data[cut:]
            self._take_over()  # a client is open now, with any frames that came with the 101
            if not data:
                return
        elif not self._ws_framed:
            self._take_over()
        if self._fast:
            self._parse(data)
            return
        self._ws_framed = True
        super().data_received(data)

    def _take_over(self) -> None:
        """Parse data frames here from now on, if the connection is open and ``websockets``'
        parser has seen no frame byte (it is then at a frame boundary with nothing buffered)."""
        protocol = self.protocol
        if (not self._ws_framed and protocol.state is _OPEN and not protocol.extensions
                and protocol.current_size is None and not protocol.reader.buffer):
            self._fast = True
            self._peer_mask = 0 if self._masked else 0x80  # a client masks, a server does not

    def _hand_over(self, data: bytes) -> None:
        """Give ``websockets`` the stream from a frame boundary on, for good."""
        self._fast = False
        self._ws_framed = True
        if data:
            super().data_received(data)

    def _parse(self, data: bytes) -> None:
        """Read the whole frames in ``data`` (after any incomplete one kept from before)."""
        rest = self._rest
        if rest:
            rest += data  # a long frame arrives in many reads: grow in place, parse it once
            if len(rest) < self._need:
                return
            data = bytes(rest)
            rest.clear()
        n = len(data)
        need = 0
        pos = 0
        protocol = self.protocol
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            off = pos + 2
            if length == 126:
                if n - off < 2:
                    break
                length = (data[off] << 8) | data[off + 1]
                off += 2
            elif length == 127:
                if n - off < 8:
                    break
                length = int.from_bytes(data[off:off + 8], "big")
                off += 8
            opcode = b0 & 0x0F
            if b0 & 0x70 or (b1 & 0x80) != self._peer_mask or 2 < opcode < 8:
                self._hand_over(data[pos:])  # websockets fails it with its own close code
                return
            if opcode >= 8:  # ping, pong, close: websockets' own handling, one whole frame
                if length > 125:  # too long for a control frame
                    self._hand_over(data[pos:])
                    return
                end = off + (4 if b1 & 0x80 else 0) + length
                if end > n:
                    need = end - pos
                    break
                super().data_received(data[pos:end])
                pos = end
                if protocol.state is not _OPEN:  # a close frame: websockets has the rest
                    self._hand_over(data[pos:])
                    return
                continue
            limit = protocol.max_message_size
            if limit is not None and self._fragments is not None:
                limit -= self._fragments_size
            fragment_limit = protocol.max_fragment_size
            if fragment_limit is not None and (limit is None or fragment_limit < limit):
                limit = fragment_limit
            if (limit is not None and length > limit) or (
                    (opcode == 0) is (self._fragments is None)):  # a continuation out of place
                self._hand_over(data[pos:])  # websockets knows the fragment state (current_size)
                return
            if b1 & 0x80:
                end = off + 4 + length
                if end > n:
                    need = end - pos
                    break
                payload = apply_mask(data[off + 4:end], data[off:off + 4])
            else:
                end = off + length
                if end > n:
                    need = end - pos
                    break
                payload = data[off:end]
            pos = end
            if b0 & 0x80:  # FIN
                if opcode:
                    self._deliver(opcode == 1, payload)
                else:
                    fragments = self._fragments
                    fragments.append(payload)  # type: ignore[union-attr]
                    self._fragments = None
                    protocol.current_size = None
                    self._deliver(self._fragments_text,
                                  b"".join(fragments))  # type: ignore[arg-type]
            elif opcode:
                self._fragments, self._fragments_text = [payload], opcode == 1
                self._fragments_size = protocol.current_size = length
            else:
                self._fragments.append(payload)  # type: ignore[union-attr]
                self._fragments_size += length
                protocol.current_size = self._fragments_size
        if pos < n:
            rest += memoryview(data)[pos:]
            self._need = need

    def process_event(self, event: Any) -> None:
        if not isinstance(event, Frame):
            super().process_event(event)  # the handshake request or response
            return
        opcode = event.opcode
        if opcode is _TEXT or opcode is _BINARY:
            if event.fin:
                self._deliver(opcode is _TEXT, bytes(event.data))
            else:
                self._fragments, self._fragments_text = [bytes(event.data)], opcode is _TEXT
        elif opcode is _CONT:
            if self._fragments is None:  # the protocol refuses this before it gets here
                return
            self._fragments.append(bytes(event.data))
            if event.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._deliver(self._fragments_text, data)
        else:
            super().process_event(event)  # ping, pong, close: websockets' own handling

    def _deliver(self, text: bool, data: bytes) -> None:
        self._inbox.append((text, data))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        high = self.max_queue_high
        if high is not None and not self._reading_paused and len(self._inbox) >= high:
            self._reading_paused = True
            self.transport.pause_reading()

    async def recv(self, decode: bool | None = None) -> Any:  # type: ignore[override]
        inbox = self._inbox
        while not inbox:
            if self._lost:
                raise self.protocol.close_exc from getattr(self, _EXC_ATTR)
            self._waiter = waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        text, data = inbox.popleft()
        if self._reading_paused:
            low = self.max_queue_low
            if low is None:  # websockets' default low-water mark
                low = (self.max_queue_high or 0) // 4
            if len(inbox) <= low:
                self._reading_paused = False
                self.transport.resume_reading()
        if decode is None:
            decode = text
        return data.decode() if decode else data

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- sending ---------------------------------------------------------------------------------

    def _mask_key(self) -> bytes:
        at = self._mask_at
        if at >= _MASK_POOL:
            self._masks, at = os.urandom(_MASK_POOL), 0
        self._mask_at = at + 4
        return self._masks[at:at + 4]

    async def send(self, message: Any, text: bool | None = None) -> None:  # type: ignore[override]
        protocol = self.protocol
        if (type(message) is str and text is None and protocol.state is _OPEN
                and self.send_in_progress is None and not protocol.expect_continuation_frame
                and not protocol.extensions and not self.transport.is_closing()):
            data = message.encode()
            if self._masked:
                mask = self._mask_key()
                self.transport.write(_text_frame_head(len(data), 0x80) + mask
                                     + apply_mask(data, mask))
            else:
                self.transport.write(_text_frame_head(len(data), 0) + data)
            if self.paused:
                await self.drain()
            return
        await super().send(message, text=text)


class _LeanClientConnection(_LeanPath, ClientConnection):  # type: ignore[misc]
    """The client connection with the lean path."""

    _masked = True


class _LeanServerConnection(_LeanPath, ServerConnection):  # type: ignore[misc]
    """The server connection with the lean path."""


ModelConnection: type[ClientConnection] = _LeanClientConnection if LEAN else ClientConnection
"""The client connection to a realtime model (``create_connection`` of ``connect``): the lean
path when :data:`LEAN`, else ``websockets``' stock ``ClientConnection``."""

LeanServerConnection: type[ServerConnection] = (
    _LeanServerConnection if LEAN else ServerConnection)
"""A server connection (``create_connection`` of ``serve``): the lean path when :data:`LEAN`,
else ``websockets``' stock ``ServerConnection``."""
