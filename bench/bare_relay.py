"""The benchmark's baseline: the least a Twilio <-> OpenAI Realtime relay can do, for comparison.

Depends on aiohttp, websockets, ``telewire.jsonfast`` and ``telewire.eventloop`` only;
``bench/run.py`` starts it as a separate process
(``python bench/bare_relay.py --port P --model-url ws://…``).

It uses what telewire uses on the same path, so that the ratio of the two measures telewire's own
overhead (frames, graph, carrier hooks, validation, logging) and not a choice of library: an
aiohttp server for the carrier's WebSocket, a ``websockets`` client to the model, the same JSON
parser (``telewire.jsonfast.loads``), outbound messages built by concatenation around the base64
text (as telewire's templates do), and the same event loop, chosen by the same function as
``telewire serve`` (``TELEWIRE_LOOP``: ``auto`` uses uvloop when installed). Per call: on
``start`` it opens the model socket in a task (caller audio that arrives meanwhile is kept),
waits for ``session.created`` and sends ``session.update`` for mu-law both ways; each ``media``
is parsed and forwarded as ``input_audio_buffer.append``; each model event is parsed and a
``response.output_audio.delta`` is forwarded as a Twilio ``media``.
Nothing else: no validation, no logging per call, no marks, no barge-in.

``--lean-model-connection`` opens the model socket with telewire's ``ModelConnection``
(``telewire.realtime.wsclient``) instead of ``websockets``' stock client connection, so that the
benchmark can also report telewire's overhead with that connection's saving taken out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telewire.errors import ConfigError
from telewire.eventloop import use_event_loop
from telewire.jsonfast import loads

_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = '"}'
_DELTA = "response.output_audio.delta"
_SESSION_UPDATE = json.dumps({"type": "session.update", "session": {
    "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
    "audio": {"input": {"format": {"type": "audio/pcmu"}},
              "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}})


class BareRelay:
    """The relay: one aiohttp route, one model socket per call."""

    def __init__(self, model_url: str, api_key: str, *, lean: bool = False) -> None:
        self.model_url = model_url
        self.api_key = api_key
        self.connect_options: dict[str, Any] = {}
        if lean:
            from telewire.realtime.wsclient import ModelConnection

            self.connect_options["create_connection"] = ModelConnection
        self.calls = 0
        self.app = web.Application()
        self.app.add_routes([web.get("/media/{carrier}", self.media),
                             web.get("/readyz", self.readyz)])

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls": self.calls})

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=2 * 1024 * 1024, compress=False, autoping=True)
        await ws.prepare(request)
        self.calls += 1
        state: dict[str, Any] = {"send": None, "pending": [], "model": None}
        opener: asyncio.Task[None] | None = None
        reader: asyncio.Task[None] | None = None

        async def open_model(stream_sid: str) -> None:
            nonlocal reader
            model = await connect(self.model_url, compression=None, max_size=4 * 1024 * 1024,
                                  additional_headers={"Authorization": "Bearer " + self.api_key},
                                  **self.connect_options)
            state["model"] = model
            while True:  # wait for session.created
                event = loads(await model.recv(decode=False))
                if event.get("type") == "session.created":
                    break
            await model.send(_SESSION_UPDATE)
            reader = asyncio.create_task(read_model(model, stream_sid))
            while state["pending"]:  # audio kept while connecting, then live
                pending, state["pending"] = state["pending"], []
                for text in pending:
                    await model.send(text)
            state["send"] = model.send

        async def read_model(model: Any, stream_sid: str) -> None:
            head = '{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"'
            try:
                while True:
                    event = loads(await model.recv(decode=False))
                    if event["type"] == _DELTA and not ws.closed:
                        await ws.send_str(head + event["delta"] + '"}}')
            except ConnectionClosed:
                pass

        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    if msg.type is WSMsgType.ERROR:
                        break
                    continue
                doc = loads(msg.data)
                event = doc.get("event")
                if event == "media":
                    text = _APPEND_HEAD + doc["media"]["payload"] + _APPEND_TAIL
                    send = state["send"]
                    if send is not None:
                        try:
                            await send(text)
                        except ConnectionClosed:
                            break
                    else:
                        state["pending"].append(text)
                elif event == "start":
                    opener = asyncio.create_task(open_model(doc["start"]["streamSid"]))
                elif event == "stop":
                    break
        finally:
            self.calls -= 1
            for task in (opener, reader):
                if task is not None and not task.done():
                    task.cancel()
            if state["model"] is not None:
                await state["model"].close()
            await ws.close()
        return ws


async def serve(port: int, model_url: str, api_key: str, lean: bool) -> None:
    relay = BareRelay(model_url, api_key, lean=lean)
    runner = web.AppRunner(relay.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-url", required=True,
                   help="the realtime model WebSocket, e.g. ws://127.0.0.1:8765/v1/realtime?model=gpt-realtime")
    p.add_argument("--lean-model-connection", action="store_true",
                   help="open the model socket with telewire.realtime.wsclient.ModelConnection")
    args = p.parse_args(argv)
    try:
        loop_name = use_event_loop(os.environ.get("TELEWIRE_LOOP", "auto"))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    print(f"bare relay on 127.0.0.1:{args.port} ({loop_name} event loop"
          + (", lean model connection)" if args.lean_model_connection else ")"), file=sys.stderr)
    asyncio.run(serve(args.port, args.model_url, os.environ.get("OPENAI_API_KEY", "placeholder"),
                      args.lean_model_connection))
    return 0


if __name__ == "__main__":
    sys.exit(main())
