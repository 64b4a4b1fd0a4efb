"""``telewire.realtime.wsclient.ModelConnection`` against a real ``websockets`` server on loopback.

The server side is stock ``websockets``: it refuses unmasked or malformed client frames, so every
round trip here also proves the directly written frames are valid RFC 6455 client frames.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from telewire.realtime.wsclient import LeanServerConnection, ModelConnection


async def _echo(ws):
    async for message in ws:
        await ws.send(message)


async def _server(handler):
    server = await serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/"


async def test_text_round_trip_at_every_length_class():
    server, url = await _server(_echo)
    async with server:
        async with connect(url, create_connection=ModelConnection, compression=None,
                           max_size=None) as ws:
            assert isinstance(ws, ModelConnection)
            # 7-bit, 16-bit and 64-bit payload lengths, and non-ASCII text
            for text in ("x", "a" * 125, "b" * 126, "é" * 40000, "c" * 70000, '{"audio":"AAA="}'):
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send("bytes please")
            assert await ws.recv(decode=False) == b"bytes please"


async def test_binary_and_fragmented_messages_arrive_whole():
    async def talk(ws):
        await ws.send(["frag", "mented ", "text"])  # one message in three frames
        await ws.send(b"\x00\x01\x02")
        await ws.send([b"\x03", b"\x04"])
        await ws.recv()

    server, url = await _server(talk)
    async with server:
        async with connect(url, create_connection=ModelConnection) as ws:
            assert await ws.recv() == "fragmented text"
            assert await ws.recv() == b"\x00\x01\x02"
            assert await ws.recv(decode=True) == "\x03\x04"
            await ws.send("done")


async def test_reading_pauses_past_max_queue_and_resumes_in_order():
    async def flood(ws):
        for i in range(200):
            await ws.send(f"m{i}")
        await ws.recv()

    server, url = await _server(flood)
    async with server:
        async with connect(url, create_connection=ModelConnection, max_queue=8) as ws:
            for _ in range(100):  # let the flood arrive without reading it
                if ws._reading_paused:
                    break
                await asyncio.sleep(0.01)
            assert ws._reading_paused, "the socket was not paused past max_queue"
            assert len(ws._inbox) >= 8
            got = [await ws.recv() for _ in range(200)]
            assert got == [f"m{i}" for i in range(200)]
            assert not ws._reading_paused
            await ws.send("done")


async def test_queued_messages_are_delivered_before_the_close_is_raised():
    async def last_words(ws):
        await ws.send("one")
        await ws.send("two")
        await ws.close(1011, "server error")

    server, url = await _server(last_words)
    async with server:
        async with connect(url, create_connection=ModelConnection) as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert await ws.recv() == "one"
            assert await ws.recv() == "two"
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            with pytest.raises(ConnectionClosed):  # sending falls back to websockets' checks
                await ws.send("anyone?")


async def test_a_waiting_recv_wakes_when_the_connection_drops():
    async def vanish(ws):
        ws.transport.abort()  # no close frame: like a dropped network

    server, url = await _server(vanish)
    async with server:
        async with connect(url, create_connection=ModelConnection) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is None  # abnormal closure: 1006


async def test_masking_keys_come_from_a_refilled_pool():
    server, url = await _server(_echo)
    async with server:
        async with connect(url, create_connection=ModelConnection) as ws:
            keys = [ws._mask_key() for _ in range(2100)]  # crosses two refills of 1024 keys
            assert all(len(k) == 4 for k in keys)
            assert len(set(keys)) > 2000  # 32-bit random keys: collisions are rare
            await ws.send("still valid after refills")
            assert await ws.recv() == "still valid after refills"


async def test_the_lean_server_connection_serves_a_stock_client():
    """The server side (used by the fake realtime server): unmasked frames a stock websockets
    client accepts, at every length class, and fragments from the client joined."""
    async def echo(ws):
        assert isinstance(ws, LeanServerConnection)
        await _echo(ws)

    server = await serve(echo, "127.0.0.1", 0, compression=None, max_size=None,
                         create_connection=LeanServerConnection)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None) as ws:
            for text in ("x", "a" * 126, "é" * 40000, "c" * 70000):
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send(["in ", "parts"])
            assert await ws.recv() == "in parts"
