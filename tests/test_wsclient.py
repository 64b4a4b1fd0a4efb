"""``telewire.realtime.wsclient.ModelConnection`` against a real ``websockets`` server on loopback.

The server side is stock ``websockets``: it refuses unmasked or malformed client frames, so every
round trip here also proves the directly written frames are valid RFC 6455 client frames. Each
behaviour is checked on both paths the module can take: the lean one (``websockets``' internals,
where they exist) and the stock ``websockets`` connections it falls back to when they do not
(or with ``TELEWIRE_LEAN_WS=0``). The lean path skips, saying what is missing, on a
``websockets`` that lacks them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import subprocess
import sys
from typing import NamedTuple

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from telewire.realtime import wsclient


class Path(NamedTuple):
    """The connection classes of one path: the client's, the server's, and whether it is lean."""

    client: type[ClientConnection]
    server: type[ServerConnection]
    lean: bool


def _path(name: str) -> Path:
    if name == "stock":
        return Path(ClientConnection, ServerConnection, False)
    if wsclient.LEAN_MISSING:
        pytest.skip("this websockets lacks what the lean path needs: "
                    + ", ".join(wsclient.LEAN_MISSING))
    return Path(wsclient._LeanClientConnection, wsclient._LeanServerConnection, True)


@pytest.fixture(params=["lean", "stock"])
def path(request) -> Path:
    """Each test that takes ``path`` runs on the lean path and on the stock fallback."""
    return _path(request.param)


@pytest.fixture
def lean() -> Path:
    """For what only the lean path has (its masking-key pool, its own frame parser)."""
    return _path("lean")


# -- which path the module takes ----------------------------------------------------------------

def _chosen(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TELEWIRE_LEAN_WS"}
    if env_value is not None:
        env["TELEWIRE_LEAN_WS"] = env_value
    code = ("from telewire.realtime import wsclient as w; "
            "print(w.LEAN, w.ModelConnection.__name__, w.LeanServerConnection.__name__)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_telewire_lean_ws_0_selects_stock_websockets_connections():
    assert _chosen("0") == "False ClientConnection ServerConnection"


def test_the_lean_path_is_taken_exactly_when_its_internals_are_there():
    expected = ("False ClientConnection ServerConnection" if wsclient.LEAN_MISSING
                else "True _LeanClientConnection _LeanServerConnection")
    assert _chosen(None) == expected
    assert _chosen("1") == expected


def test_websockets_16_and_later_have_everything_the_lean_path_needs():
    """The lean path was written against websockets 16 and 17; if a later release moves an
    internal, this names it (the fallback keeps calls working, at websockets' own cost)."""
    major = int(websockets.version.version.split(".", 1)[0])
    if major < 16:
        assert wsclient.LEAN_MISSING  # 14 and 15 lack the fragment and send state it uses
        assert not wsclient.LEAN and wsclient.ModelConnection is ClientConnection
    else:
        assert wsclient.LEAN_MISSING == ()


# -- both paths ---------------------------------------------------------------------------------

async def _echo(ws):
    async for message in ws:
        await ws.send(message)


async def _server(handler):
    server = await serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/"


async def test_text_round_trip_at_every_length_class(path):
    server, url = await _server(_echo)
    async with server:
        async with connect(url, create_connection=path.client, compression=None,
                           max_size=None) as ws:
            assert type(ws) is path.client
            # 7-bit, 16-bit and 64-bit payload lengths, and non-ASCII text
            # (the 4 MB one arrives in many reads: its frame is gathered, then parsed once)
            for text in ("x", "a" * 125, "b" * 126, "é" * 40000, "c" * 70000, '{"audio":"AAA="}',
                         "d" * (4 << 20)):
                await ws.send(text)
                assert await ws.recv() == text
            if path.lean:
                assert ws._fast  # data frames were parsed by ModelConnection, not websockets
            await ws.send("bytes please")
            assert await ws.recv(decode=False) == b"bytes please"


async def test_binary_and_fragmented_messages_arrive_whole(path):
    async def talk(ws):
        await ws.send(["frag", "mented ", "text"])  # one message in three frames
        await ws.send(b"\x00\x01\x02")
        await ws.send([b"\x03", b"\x04"])
        await ws.recv()

    server, url = await _server(talk)
    async with server:
        async with connect(url, create_connection=path.client) as ws:
            assert await ws.recv() == "fragmented text"
            assert await ws.recv() == b"\x00\x01\x02"
            assert await ws.recv(decode=True) == "\x03\x04"
            await ws.send("done")


async def test_reading_pauses_past_max_queue_and_resumes_in_order(path):
    async def flood(ws):
        for i in range(200):
            await ws.send(f"m{i}")
        await ws.recv()

    server, url = await _server(flood)
    async with server:
        async with connect(url, create_connection=path.client, max_queue=8) as ws:
            if path.lean:
                for _ in range(100):  # let the flood arrive without reading it
                    if ws._reading_paused:
                        break
                    await asyncio.sleep(0.01)
                assert ws._reading_paused, "the socket was not paused past max_queue"
                assert len(ws._inbox) >= 8
            got = [await ws.recv() for _ in range(200)]
            assert got == [f"m{i}" for i in range(200)]
            if path.lean:
                assert not ws._reading_paused
            await ws.send("done")


async def test_queued_messages_are_delivered_before_the_close_is_raised(path):
    async def last_words(ws):
        await ws.send("one")
        await ws.send("two")
        await ws.close(1011, "server error")

    server, url = await _server(last_words)
    async with server:
        async with connect(url, create_connection=path.client) as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert await ws.recv() == "one"
            assert await ws.recv() == "two"
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            with pytest.raises(ConnectionClosed):  # sending falls back to websockets' checks
                await ws.send("anyone?")


async def test_a_waiting_recv_wakes_when_the_connection_drops(path):
    async def vanish(ws):
        ws.transport.abort()  # no close frame: like a dropped network

    server, url = await _server(vanish)
    async with server:
        async with connect(url, create_connection=path.client) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is None  # abnormal closure: 1006


async def test_masking_keys_come_from_a_refilled_pool(lean):
    server, url = await _server(_echo)
    async with server:
        async with connect(url, create_connection=lean.client) as ws:
            keys = [ws._mask_key() for _ in range(2100)]  # crosses two refills of 1024 keys
            assert all(len(k) == 4 for k in keys)
            assert len(set(keys)) > 2000  # 32-bit random keys: collisions are rare
            await ws.send("still valid after refills")
            assert await ws.recv() == "still valid after refills"


async def test_the_lean_server_connection_serves_a_stock_client(path):
    """The server side (used by the fake realtime server): unmasked frames a stock websockets
    client accepts, at every length class, and fragments from the client joined."""
    async def echo(ws):
        assert type(ws) is path.server
        await ws.send(await ws.recv())
        if path.lean:
            assert ws._fast  # the server side parses client frames itself too
        await _echo(ws)

    server = await serve(echo, "127.0.0.1", 0, compression=None, max_size=None,
                         create_connection=path.server)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None) as ws:
            await ws.send("first")
            assert await ws.recv() == "first"
            for text in ("x", "a" * 126, "é" * 40000, "c" * 70000):
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send(["in ", "parts"])
            assert await ws.recv() == "in parts"


# -- the frame parser, byte for byte against stock websockets ----------------------------------
#
# A hand-written server answers the handshake and then writes a script of raw frames in chosen
# pieces. The same script goes to a stock ``websockets`` client and to ``ModelConnection``: both
# must receive the same messages, close with the same code and reason, and write the same frames
# back (pongs, close replies).

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
           mask: bytes | None = None) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 0x10000:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def _close(code: int, reason: str = "") -> bytes:
    return _frame(0x8, code.to_bytes(2, "big") + reason.encode())


def _read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, unmasked payload) of every whole client frame in ``data``."""
    out, pos = [], 0
    while len(data) - pos >= 2:
        opcode, n, off = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, off = int.from_bytes(data[off:off + 2], "big"), off + 2
        elif n == 127:
            n, off = int.from_bytes(data[off:off + 8], "big"), off + 8
        mask, off = data[off:off + 4], off + 4
        out.append((opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data[off:off + n]))))
        pos = off + n
    return out


async def _scripted(chunks: list[bytes], *, glued: bool, lean: bool, max_size: int | None = None):
    """Run one client against a server writing ``chunks`` (the first one in the same write as
    the 101 response when ``glued``). Returns the messages, the close frames received and sent,
    the client's frames, and whether ModelConnection's own reader was in use after the first
    message (``None`` for a stock client or when no message came)."""
    client_bytes = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        rest = list(chunks)
        writer.write(response + (rest.pop(0) if glued and rest else b""))
        for chunk in rest:
            await writer.drain()
            await asyncio.sleep(0.001)  # separate reads on the client, most of the time
            writer.write(chunk)
        await writer.drain()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            while True:  # what the client answers, until it closes or goes quiet
                data = await asyncio.wait_for(reader.read(65536), 0.5)
                if not data:
                    break
                client_bytes.extend(data)
                if any(op == 0x8 for op, _ in _read_frames(bytes(client_bytes))):
                    break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kwargs: dict = {"compression": None, "max_size": max_size, "ping_interval": None}
    if lean:
        kwargs["create_connection"] = wsclient._LeanClientConnection
    got: list = []
    fast_at_first = None
    async with server:
        async with connect(f"ws://127.0.0.1:{port}/", **kwargs) as ws:
            try:
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), 5))
                    if fast_at_first is None and lean:
                        fast_at_first = ws._fast
            except ConnectionClosed as exc:
                rcvd = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
                sent = (exc.sent.code, exc.sent.reason) if exc.sent else None
    return got, rcvd, sent, _read_frames(bytes(client_bytes)), fast_at_first


def _pieces(data: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(data[pos:pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return out


_DELTA = b'{"type":"response.output_audio.delta","delta":"' + b"A" * 216 + b'"}'
_SCRIPTS = {
    "messages and a close": [_frame(1, _DELTA), _frame(1, b"x" * 125), _frame(1, b"y" * 126),
                             _frame(2, b"\x00\xff"), _frame(1, "é".encode() * 40000),
                             _close(1000, "bye")],
    "fragments with control frames between them": [
        _frame(1, b"frag", fin=False), _frame(0x9, b"are you there"),
        _frame(0, b"men", fin=False), _frame(0xA, b"unsolicited"), _frame(0, b"ted"),
        _frame(2, b"\x01", fin=False), _frame(0, b"\x02"), _close(1001, "going away")],
    "a masked server frame": [_frame(1, b"ok"), _frame(1, b"masked", mask=b"abcd")],
    "a reserved bit": [_frame(1, b"ok"), _frame(1, b"rsv1", rsv=0x40)],
    "a reserved opcode": [_frame(1, b"ok"), _frame(0x3, b"what")],
    "a control frame too long": [_frame(1, b"ok"), _frame(0x9, b"p" * 126)],
    "a frame over max_size": [_frame(1, b"ok"), _frame(1, b"z" * 2000)],
    "a fragmented message over max_size": [_frame(1, b"a" * 600, fin=False),
                                           _frame(0, b"b" * 600)],
    "a continuation out of place": [_frame(1, b"ok"), _frame(0, b"orphan")],
    "a new message before the last one ended": [_frame(1, b"half", fin=False),
                                                _frame(1, b"other")],
    "a close in the middle of a message": [_frame(1, b"half", fin=False), _close(1000)],
    "a frame with a 64-bit length": [_frame(1, b"L" * 70000), _close(1000)],
    "a close with a bad code": [_frame(1, b"ok"), _close(999)],
}


@pytest.mark.parametrize("name", list(_SCRIPTS))
@pytest.mark.parametrize("split", ["whole", "glued to the handshake", "in small pieces"])
async def test_the_frame_parser_behaves_exactly_like_websockets(name, split, lean):
    frames = _SCRIPTS[name]
    if split == "in small pieces":
        chunks = _pieces(b"".join(frames), (1, 2, 3, 7, 50, 999))[:400]
        chunks.append(b"".join(frames)[sum(map(len, chunks)):])
    else:
        chunks = frames
    max_size = 1000 if "max_size" in name else None
    stock = await _scripted(chunks, glued=split != "whole", lean=False, max_size=max_size)
    lean = await _scripted(chunks, glued=split != "whole", lean=True, max_size=max_size)
    assert lean[:4] == stock[:4]
    if split == "glued to the handshake" and frames[0][0] in (0x81, 0x82):  # a whole message
        assert lean[4] is True  # frames that come with the 101 response are read on the lean path
    assert stock[1] is not None or stock[2] is not None  # every script ends the connection


async def test_keepalive_pings_are_answered_on_the_lean_path(path):
    """websockets' own keepalive (our pings, the server's pongs) still works once data frames
    are parsed by ModelConnection: the connection outlives several ping timeouts."""
    server, url = await _server(_echo)
    async with server:
        async with connect(url, create_connection=path.client, ping_interval=0.02,
                           ping_timeout=0.2) as ws:
            if path.lean:
                assert ws._fast
            for i in range(15):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
                await asyncio.sleep(0.02)
            assert ws.latency > 0  # set when a pong answers our ping


async def test_the_lean_server_connection_parses_masked_frames_in_pieces(path):
    """The server side unmasks client frames however they are split, and refuses an unmasked
    one with 1002 as websockets does."""
    got: list = []
    closed: asyncio.Future = asyncio.get_running_loop().create_future()

    async def collect(ws):
        try:
            async for message in ws:
                got.append(message)
        except ConnectionClosed as exc:
            closed.set_result((exc.sent.code, exc.sent.reason) if exc.sent else None)
        else:
            closed.set_result(None)

    server = await serve(collect, "127.0.0.1", 0, compression=None, max_size=None,
                         create_connection=path.server)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        stream = (_frame(1, _DELTA, mask=b"\x01\x02\x03\x04")
                  + _frame(1, b"pa", fin=False, mask=b"wxyz") + _frame(0, b"rts", mask=b"\0\0\0\0")
                  + _frame(1, b"c" * 70000, mask=b"kkkk") + _frame(1, b"unmasked"))
        for piece in _pieces(stream, (1, 3, 5, 200, 4096)):
            writer.write(piece)
            await writer.drain()
        close = await asyncio.wait_for(reader.readexactly(2 + 2 + len("incorrect masking")), 5)
        assert close == _close(1002, "incorrect masking")  # the server's close frame
        writer.close()  # the server failed the connection: it waits for the TCP close only
        assert await asyncio.wait_for(closed, 5) == (1002, "incorrect masking")
        assert got == [_DELTA.decode(), "parts", "c" * 70000]
