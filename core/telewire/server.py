"""The HTTP/WebSocket server: carrier media sockets, answer webhooks and health, on one port.

Depends on ``telewire.graph``, ``telewire.registry``, ``telewire.settings`` and
``telewire.errors``; only ``cli`` and ``testing`` depend on it.

Routes:
    ``GET /media/{carrier}``          WebSocket upgrade: one call per connection.
    ``GET|POST /answer/{carrier}``    the carrier's incoming-call webhook (TwiML, BXML …).
    ``POST /events/{carrier}``        events the carrier delivers by webhook (Bandwidth DTMF),
                                      routed into the live call they name.
    ``GET /healthz``                  liveness and load: live calls, limit, carriers.
    ``GET /calls``                    the live calls.
    ``POST /calls/{carrier}/{call_id}/steer|interrupt|hangup``
                                      operator control of one live call (JSON body for steer:
                                      ``{"instructions": …, "voice": …}``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from aiohttp import WSMsgType, web
from loguru import logger

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError, CarrierError, ConfigError, PluginError
from telewire.frames import InterruptFrame, SteerFrame
from telewire.graph import CallGraph, Graph, Observer
from telewire.nodes.carrier_in import CarrierIn
from telewire.registry import CarrierRegistry
from telewire.settings import ServerSettings

__all__ = ["TelewireServer"]

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
#: what ``receive`` returns once the media socket is closing or closed (ends ``async for``)
_SOCKET_DONE = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})

#: Builds the observers of one call: ``{(node, port): [observer, …]}``; ``("*", "*")`` taps all.
ObserverFactory = Callable[[], Mapping[tuple[str, str], list[Observer]]]


class TelewireServer:
    """Serves calls for every installed carrier through one graph.

    Args:
        settings: process settings.
        graph: the validated graph every call runs.
        registry: the carriers.
        observers: builds per-call port observers (recorder, tracing attach here).
    """

    def __init__(self, settings: ServerSettings, graph: Graph, registry: CarrierRegistry,
                 observers: ObserverFactory | None = None) -> None:
        self.settings = settings
        self.graph = graph
        self.registry = registry
        self.observers = observers
        ins = graph.nodes_of_type(CarrierIn)
        if len(ins) != 1:
            raise ConfigError(f"{graph.source}: a graph needs exactly one carrier_in node, "
                              f"found {len(ins)}: {ins}")
        self.tel_in = ins[0]
        self.calls: set[CallGraph] = set()
        self.live: dict[tuple[str, str], CallGraph] = {}
        self.unusable: dict[str, str] = {}
        self.calls_total = 0
        self.draining = False
        self.app = web.Application()
        self.app.add_routes([
            web.get("/media/{carrier}", self.media),
            web.get("/answer/{carrier}", self.answer),
            web.post("/answer/{carrier}", self.answer),
            web.post("/events/{carrier}", self.events),
            web.get("/healthz", self.healthz),
            web.get("/calls", self.list_calls),
            web.post("/calls/{carrier}/{call_id}/{action}", self.control),
        ])
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Start listening; returns the bound port. Logs each carrier's start-up warnings."""
        for name in self.registry.names():
            try:
                carrier = self.registry.get(name)
                self.graph.check_carrier(carrier)
                for warning in carrier.warnings():
                    logger.warning("carrier {}: {}", name, warning)
            except (PluginError, ConfigError) as exc:
                self.unusable[name] = str(exc)
                logger.error("carrier {} unusable with this graph; its calls will be refused: {}",
                             name, exc)
        for failure in self.registry.failures:
            logger.error("carrier plugin {!r} failed to load: {}", failure.name, failure.error)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port,
                           reuse_address=True)
        await site.start()
        server = site._server  # the asyncio server; aiohttp keeps no public accessor
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        logger.info("telewire listening on http://{}:{} (carriers: {})", self.settings.host,
                    self.port, ", ".join(self.registry.names()) or "none")
        return self.port

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting calls, let live calls finish (up to the drain timeout), end the rest."""
        self.draining = True
        timeout = self.settings.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if self.calls:
            logger.info("draining {} live call(s) for up to {:.0f} s", len(self.calls), timeout)
            waits = [asyncio.ensure_future(c.ended.wait()) for c in list(self.calls)]
            _, pending = await asyncio.wait(waits, timeout=timeout) if waits else (set(), set())
            for p in pending:
                p.cancel()
            for call in list(self.calls):
                await call.end("shutdown", "server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._drain_archives(timeout)

    @staticmethod
    async def _drain_archives(timeout: float) -> None:
        """Recordings: the ended calls' archives upload in the background; wait for them (at
        least a few seconds) so a SIGTERM loses nothing. What is not stored stays spooled."""
        from telewire.archive import drain_uploads

        await drain_uploads(max(timeout, 5.0))

    # ----------------------------------------------------------------------------- requests

    def _public_url(self, request: web.Request, *, websocket: bool) -> str:
        base = self.settings.public_url
        if base:
            parts = urlsplit(base)
            scheme, netloc = parts.scheme, parts.netloc
            prefix = parts.path.rstrip("/")
        else:
            scheme, netloc, prefix = request.scheme, request.host, ""
            if self.settings.trust_forwarded:
                scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
                netloc = request.headers.get("X-Forwarded-Host", netloc).split(",")[0].strip()
        if websocket:
            scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        return urlunsplit((scheme, netloc, prefix + request.path, request.query_string, ""))

    async def _http_request(self, request: web.Request, *, websocket: bool) -> HttpRequest:
        form: tuple[tuple[str, str], ...] = ()
        body = b""
        if request.method == "POST":
            body = await request.read()
            if request.content_type == "application/x-www-form-urlencoded":
                data = await request.post()
                form = tuple((k, str(v)) for k, v in data.items())
        return HttpRequest(
            method=request.method,
            url=self._public_url(request, websocket=websocket),
            headers={k.lower(): v for k, v in request.headers.items()},
            form=form,
            query=tuple(request.query.items()),
            body=body,
        )

    def _carrier(self, request: web.Request) -> Any:
        name = request.match_info["carrier"]
        try:
            return self.registry.get(name)
        except (ConfigError, PluginError) as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({
            "status": "draining" if self.draining else "ok",
            "calls": len(self.calls),
            "max_calls": self.settings.max_calls,
            "calls_total": self.calls_total,
            "carriers": self.registry.names(),
        }, status=503 if self.draining else 200)

    async def _signed(self, carrier: Any, request: web.Request, what: str,
                      purpose: Literal["webhook", "websocket"] = "webhook"
                      ) -> HttpRequest | web.Response:
        """The request as carrier hooks see it, or a 403 when its signature does not check out."""
        req = await self._http_request(request, websocket=purpose == "websocket")
        try:
            carrier.authenticate(req, purpose)
        except AuthenticationError as exc:
            logger.warning("{} for {} refused: {}", what, carrier.name, exc)
            return web.Response(status=403, text="signature check failed\n")
        return req

    async def answer(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request)
        req = await self._signed(carrier, request, "answer webhook")
        if isinstance(req, web.Response):
            return req
        stream_url = self._public_url(request, websocket=True)
        stream_url = stream_url.split("?", 1)[0].rsplit("/answer/", 1)[0] + f"/media/{carrier.name}"
        try:
            doc = carrier.answer_document(req, stream_url, dict(self.settings.answer_parameters))
        except (PluginError, ConfigError) as exc:
            logger.error("answer webhook for {} failed: {}", carrier.name, exc)
            return web.Response(status=500, text="answer document failed\n")
        if doc is None:
            return web.Response(status=404, text=f"carrier {carrier.name} has no answer webhook\n")
        return web.Response(status=doc.status, text=doc.body, content_type=doc.content_type)

    async def events(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request)
        req = await self._signed(carrier, request, "event webhook")
        if isinstance(req, web.Response):
            return req
        try:
            event = carrier.parse_webhook(req)
        except CarrierError as exc:
            logger.error("event webhook for {} rejected: {}", carrier.name, exc)
            return web.Response(status=400, text=f"{exc}\n")
        except PluginError as exc:
            logger.error("event webhook for {} failed: {}", carrier.name, exc)
            return web.Response(status=500, text="event webhook failed\n")
        if event is None:
            return web.Response(status=404, text=f"carrier {carrier.name} has no event webhooks\n")
        call = self.live.get((carrier.name, event.call_id))
        if call is None:
            logger.warning("event webhook for {} names call {!r}, which is not live here",
                           carrier.name, event.call_id)
            return web.Response(status=404, text=f"no live call {event.call_id!r}\n")
        tel_in: CarrierIn = call.nodes[self.tel_in]  # type: ignore[assignment]
        for frame in event.frames:
            await tel_in.dispatch(frame)
        if event.response is None:
            return web.Response(status=204)
        doc = event.response
        return web.Response(status=doc.status, text=doc.body, content_type=doc.content_type)

    async def list_calls(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"carrier": c.carrier.name, "call_id": c.context.call_id,
             "stream_id": c.context.stream_id, "started": c.context.started}
            for c in self.calls])

    async def control(self, request: web.Request) -> web.Response:
        """Operator control: steer, interrupt or hang up one live call."""
        key = (request.match_info["carrier"], request.match_info["call_id"])
        action = request.match_info["action"]
        call = self.live.get(key)
        if call is None:
            return web.json_response({"error": f"no live call {key[1]!r} on {key[0]!r}"},
                                     status=404)
        if action == "steer":
            try:
                body = await request.json()
                frame = SteerFrame(instructions=body.get("instructions"), voice=body.get("voice"))
            except (ValueError, TypeError, AttributeError) as exc:
                return web.json_response({"error": f"steer needs a JSON object with "
                                                   f"instructions and/or voice: {exc}"}, status=400)
            await call.inject("steer_in", frame)
        elif action == "interrupt":
            await call.inject("interrupt_in", InterruptFrame(source="operator", reason="operator"),
                              carrier_side=True)
        elif action == "hangup":
            asyncio.ensure_future(call.hang_up("operator", "hung up by an operator"))
        else:
            return web.json_response({"error": f"unknown action {action!r}; use steer, "
                                               "interrupt or hangup"}, status=404)
        call.log.info("operator: {}", action)
        return web.json_response({"ok": True, "action": action})

    def _track(self, call: CallGraph) -> None:
        """Index a started call by its carrier call id (for event webhooks)."""
        if call.context.call_id:
            self.live[(call.carrier.name, call.context.call_id)] = call

    def _untrack(self, call: CallGraph) -> None:
        self.calls.discard(call)
        key = (call.carrier.name, call.context.call_id)
        if self.live.get(key) is call:
            del self.live[key]

    async def media(self, request: web.Request) -> web.StreamResponse:
        carrier = self._carrier(request)
        if self.draining:
            return web.Response(status=503, text="server is draining\n")
        if carrier.name in self.unusable:
            return web.Response(status=501, text=f"{self.unusable[carrier.name]}\n")
        if len(self.calls) >= self.settings.max_calls:
            logger.warning("call refused: {} live calls is the limit", self.settings.max_calls)
            return web.Response(status=503, text="at capacity\n")
        req = await self._signed(carrier, request, "media socket", "websocket")
        if isinstance(req, web.Response):
            return req
        envelope = self.graph.envelope
        protocols = (envelope.spec.subprotocol,) if envelope and envelope.spec.subprotocol else ()
        ws = web.WebSocketResponse(max_msg_size=self.settings.ws_max_message_bytes,
                                   compress=False, autoping=True, protocols=protocols)
        await ws.prepare(request)
        text_only = carrier.capabilities_for(self.graph.envelope).text_frames_only

        async def send(message: str | bytes) -> None:
            if ws.closed:
                return
            try:
                if isinstance(message, str):
                    await ws.send_str(message)
                elif text_only:
                    raise PluginError(f"carrier {carrier.name!r} produced a binary frame but "
                                      "declares text_frames_only", plugin=carrier.name)
                else:
                    await ws.send_bytes(message)
            except (ConnectionError, RuntimeError) as exc:
                logger.debug("send on closed media socket dropped: {}", exc)

        call = CallGraph(self.graph, carrier, send,
                         self.observers() if self.observers else {}, on_start=self._track)
        tel_in: CarrierIn = call.nodes[self.tel_in]  # type: ignore[assignment]
        self.calls.add(call)
        self.calls_total += 1
        closer = asyncio.ensure_future(self._close_when_ended(call, ws))
        reason, detail = "socket_closed", ""
        try:
            receive, feed, ended = ws.receive, tel_in.feed, call.ended
            while True:  # ``async for msg in ws`` without its extra coroutine per message
                msg = await receive()
                kind = msg.type
                if kind is _TEXT or kind is _BINARY:
                    await feed(msg.data)
                elif kind in _SOCKET_DONE:
                    break
                elif kind is WSMsgType.ERROR:
                    reason, detail = "socket_error", str(ws.exception())
                    call.log.error("media socket error: {}", detail)
                    break
                if ended.is_set():
                    break
            if ws.close_code and ws.close_code not in (1000, 1001):
                detail = detail or f"close code {ws.close_code}"
        except asyncio.CancelledError:
            reason, detail = "shutdown", "server stopping"
            raise
        except Exception as exc:  # a bug in a node or plugin: end this call, keep the rest
            reason, detail = "internal_error", f"{type(exc).__name__}: {exc}"
            call.log.exception("call failed")
        finally:
            await call.end(reason, detail)
            closer.cancel()
            await ws.close()
            self._untrack(call)
        return ws

    async def _close_when_ended(self, call: CallGraph, ws: web.WebSocketResponse) -> None:
        await call.ended.wait()
        if not ws.closed:
            await ws.close()
