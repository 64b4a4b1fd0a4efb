"""The HTTP/WebSocket server: carrier media sockets, answer webhooks, probes and the operator API.

Depends on ``telewire.graph``, ``telewire.registry``, ``telewire.settings``, ``telewire.calltoken``
and ``telewire.errors``; only ``cli`` and ``testing`` depend on it.

Routes on the public (carrier-facing) port:
    ``GET /media/{carrier}``          WebSocket upgrade: one call per connection.
    ``GET|POST /answer/{carrier}``    the carrier's incoming-call webhook (TwiML, BXML …).
    ``POST /events/{carrier}``        events the carrier delivers by webhook (Bandwidth DTMF),
                                      routed into the live call they name.
    ``GET /livez``, ``GET /readyz``   liveness (the process serves) and readiness (it takes calls).

The operator API, behind ``Authorization: Bearer <TELEWIRE_OPERATOR_TOKEN>`` (off, 404, without a
token; on the admin listener alone when ``TELEWIRE_ADMIN_PORT`` is set):
    ``GET /api/calls``                the live calls.
    ``POST /api/calls/[{carrier}/]{call_id}/steer|interrupt|hangup``
                                      operator control of one live call; JSON bodies only
                                      (steer: ``{"instructions": …, "voice": …}``).
    ``GET /metrics``                  Prometheus metrics (the operator token, or the
                                      read-only ``TELEWIRE_METRICS_TOKEN``).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from aiohttp import WSMsgType, web
from loguru import logger

from telewire import calltoken
from telewire.carrier import HttpRequest
from telewire.envelope import id_problem
from telewire.errors import AuthenticationError, CarrierError, ConfigError, PluginError
from telewire.frames import InterruptFrame, StartFrame, SteerFrame
from telewire.graph import CallGraph, Graph, Observer
from telewire.metrics import CONTENT_TYPE as METRICS_TYPE
from telewire.metrics import ServerMetrics
from telewire.nodes.carrier_in import CarrierIn
from telewire.registry import CarrierRegistry
from telewire.settings import ServerSettings

if TYPE_CHECKING:
    from telewire.tracing import CallTrace, Tracing

__all__ = ["TelewireServer"]

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
#: what ``receive`` returns once the media socket is closing or closed (ends ``async for``)
_SOCKET_DONE = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})
#: the largest HTTP body accepted (webhooks and operator requests are small)
_MAX_BODY = 256 * 1024
#: what an X-Forwarded-For hop may be: an IPv4 or IPv6 address (with an optional port)
_ADDRESS = re.compile(r"[0-9A-Fa-f:.\[\]]+")
#: operator steer limits
_MAX_INSTRUCTIONS = 32 * 1024
_MAX_VOICE = 64

#: Builds the observers of one call: ``{(node, port): [observer, …]}``; ``("*", "*")`` taps all.
ObserverFactory = Callable[[], Mapping[tuple[str, str], list[Observer]]]


@dataclass(slots=True, eq=False)
class _Conn:
    """What the server tracks of one media socket besides its call graph."""

    call: CallGraph
    ip: str
    opened: float
    signed: bool | None
    seen: int = 0
    seen_at: float = 0.0
    pending: bool = True
    trace: "CallTrace | None" = None


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class TelewireServer:
    """Serves calls for every enabled carrier through one graph.

    Args:
        settings: process settings.
        graph: the validated graph every call runs.
        registry: the carriers.
        observers: builds per-call port observers (recorder, tracing attach here).
        tracing: the span tree of every call (``None``: no tracing, no observer).
    """

    def __init__(self, settings: ServerSettings, graph: Graph, registry: CarrierRegistry,
                 observers: ObserverFactory | None = None,
                 tracing: "Tracing | None" = None) -> None:
        self.settings = settings
        self.graph = graph
        self.registry = registry
        self.observers = observers
        self.tracing = tracing
        ins = graph.nodes_of_type(CarrierIn)
        if len(ins) != 1:
            raise ConfigError(f"{graph.source}: a graph needs exactly one carrier_in node, "
                              f"found {len(ins)}: {ins}")
        self.tel_in = ins[0]
        self.calls: set[CallGraph] = set()
        self.live: dict[tuple[str, str], CallGraph] = {}
        self.unusable: dict[str, str] = {}
        self.calls_total = 0
        self.metrics = ServerMetrics(
            lambda: self.calls, settings.max_calls,
            span_drops=(lambda: tracing.dropped_spans) if tracing is not None else None)
        self.draining = False
        secret = settings.call_token_secret
        self.call_tokens = calltoken.CallTokens(
            secret.get_secret_value().encode() if secret else None,
            ttl_s=settings.call_token_ttl_s)
        self._conns: dict[CallGraph, _Conn] = {}
        self._per_ip: dict[str, int] = {}
        self._pending_per_ip: dict[str, int] = {}
        self._head_timers: dict[Any, asyncio.TimerHandle] = {}
        self._operator_token = (settings.operator_token.get_secret_value().encode()
                                if settings.operator_token else None)
        self._metrics_tokens = tuple(
            t.get_secret_value().encode()
            for t in (settings.operator_token, settings.metrics_token) if t is not None)
        public = self._routes_public()
        if settings.admin_port is None:
            public += self._routes_api()
        self.app = self._application(public)
        self.admin_app = (self._application(self._routes_probes() + self._routes_api())
                          if settings.admin_port is not None else None)
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.admin_port: int | None = None

    def _application(self, routes: list[web.RouteDef]) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY,
                              middlewares=[self._head_seen, self._operator_guard])
        app.add_routes(routes)
        return app

    def _routes_probes(self) -> list[web.RouteDef]:
        return [web.get("/livez", self.livez), web.get("/readyz", self.readyz)]

    def _routes_public(self) -> list[web.RouteDef]:
        return [
            web.get("/media/{carrier}", self.media),
            web.get("/answer/{carrier}", self.answer),
            web.post("/answer/{carrier}", self.answer),
            web.post("/events/{carrier}", self.events),
            *self._routes_probes(),
        ]

    def _routes_api(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics_page),
            web.get("/api/calls", self.list_calls),
            web.post("/api/calls/{call_id}/{action}", self.control),
            web.post("/api/calls/{carrier}/{call_id}/{action}", self.control),
        ]

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> int:
        """Start listening; returns the bound port. Logs each carrier's start-up warnings."""
        enabled = self.settings.carrier_names()
        for name in enabled:
            if name not in self.registry:
                raise ConfigError(f"TELEWIRE_CARRIERS names {name!r}, which is not installed; "
                                  f"installed: {', '.join(self.registry.names()) or 'none'}")
        for name in self.carrier_names():
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
        if self._operator_token is None:
            logger.warning("operator API is off: TELEWIRE_OPERATOR_TOKEN is not set, so /api/ "
                           "answers 404")
        self.port = await self._listen(self.app, self.settings.host, self.settings.port)
        if self.admin_app is not None:
            assert self.settings.admin_port is not None
            self.admin_port = await self._listen(self.admin_app, self.settings.admin_host,
                                                 self.settings.admin_port)
            logger.info("operator API on http://{}:{}/api/ only", self.settings.admin_host,
                        self.admin_port)
        # Recordings: resume what the spool holds (archives not yet stored, partial ones of a
        # process that died) now, not at the first call (``Node.on_server_start``).
        for node_name, spec in self.graph.nodes.items():
            await spec.cls.on_server_start(node_name, spec.config)
        self._sweeper = asyncio.ensure_future(self._sweep())
        logger.info("telewire listening on http://{}:{} (carriers: {})", self.settings.host,
                    self.port, ", ".join(self.carrier_names()) or "none")
        return self.port

    async def _listen(self, app: web.Application, host: str, port: int) -> int:
        """Serve ``app`` on ``host:port`` with a header-read deadline on every connection."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=self.settings.header_timeout_s)
        await runner.setup()
        self._runners.append(runner)
        factory = runner.server
        assert factory is not None
        loop = asyncio.get_running_loop()

        def protocol() -> Any:
            handler = factory()
            self._arm_head_timer(handler)
            return handler

        server = await loop.create_server(protocol, host, port, reuse_address=True,
                                          family=socket.AF_UNSPEC)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def carrier_names(self) -> list[str]:
        """The carriers this process serves (``TELEWIRE_CARRIERS``, or every installed one)."""
        enabled = self.settings.carrier_names()
        return [n for n in self.registry.names() if not enabled or n in enabled]

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        self._servers.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for timer in self._head_timers.values():
            timer.cancel()
        self._head_timers.clear()
        await self._drain_archives(timeout)

    @staticmethod
    async def _drain_archives(timeout: float) -> None:
        """Recordings: the ended calls' archives upload in the background; wait for them (at
        least a few seconds) so a SIGTERM loses nothing. What is not stored stays spooled."""
        from telewire.archive import drain_uploads

        await drain_uploads(max(timeout, 5.0))

    # ----------------------------------------------------------------------------- guards

    def _arm_head_timer(self, handler: Any) -> None:
        """Close a connection that has not sent a whole request head within the deadline."""
        loop = asyncio.get_running_loop()

        def expire() -> None:
            if self._head_timers.pop(handler, None) is None:
                return
            transport = handler.transport
            if transport is not None and not transport.is_closing():
                logger.info("closing a connection that sent no complete request head within "
                            "{:g} s", self.settings.header_timeout_s)
                transport.close()

        self._head_timers[handler] = loop.call_later(self.settings.header_timeout_s, expire)

    @web.middleware
    async def _head_seen(self, request: web.Request, handler: Callable[..., Awaitable[Any]]
                         ) -> web.StreamResponse:
        """A request head arrived: stop its connection's deadline; re-arm it for the next."""
        protocol = request.protocol
        timer = self._head_timers.pop(protocol, None)
        if timer is not None:
            timer.cancel()
        try:
            return await handler(request)
        finally:
            if protocol.transport is not None and not protocol.transport.is_closing():
                self._arm_head_timer(protocol)

    @web.middleware
    async def _operator_guard(self, request: web.Request,
                              handler: Callable[..., Awaitable[Any]]) -> web.StreamResponse:
        """``/api/`` and ``/metrics``: 404 when no token is configured, 401 without the right
        bearer token, 415 for a POST that is not JSON (no cross-site form can steer a call)."""
        if request.path == "/metrics":
            tokens = self._metrics_tokens
        elif request.path.startswith("/api/"):
            tokens = (self._operator_token,) if self._operator_token is not None else ()
        else:
            return await handler(request)
        if not tokens:
            return _json_error(404, f"{request.path[:80]!r} is off: set TELEWIRE_OPERATOR_TOKEN"
                                    + (" or TELEWIRE_METRICS_TOKEN" if request.path == "/metrics"
                                       else ""))
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip().encode("utf-8", "replace")
        # every token compared, so the time taken does not say which one nearly matched
        matches = [hmac.compare_digest(presented, token) for token in tokens]
        if scheme.lower() != "bearer" or not any(matches):
            logger.warning("operator API: request to {!r} from {} refused (missing or wrong "
                           "bearer token)", request.path[:120], self._remote(request))
            return _json_error(401, "missing or wrong bearer token",
                               **{"WWW-Authenticate": 'Bearer realm="telewire"'})
        if request.method == "POST" and request.content_type != "application/json":
            return _json_error(415, f"the operator API takes application/json bodies, not "
                                    f"{request.content_type[:80]!r}")
        return await handler(request)

    def _remote(self, request: web.Request) -> str:
        """The peer address; behind a trusted proxy, the last hop it names in X-Forwarded-For."""
        if self.settings.trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            hops = [h.strip() for h in forwarded.split(",") if h.strip()]
            if hops:
                hop = hops[-1]
                # an address, never text that could forge a log line or grow the per-IP maps
                return hop if len(hop) <= 64 and _ADDRESS.fullmatch(hop) else "invalid"
        return request.remote or "unknown"

    async def _sweep(self) -> None:
        """Once a second: end sockets that never started, calls whose media stopped, and calls
        past the maximum length. One task for all calls; nothing per frame."""
        s = self.settings
        period = min(1.0, s.start_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._conns.values()):
                call = conn.call
                if call.ended.is_set():
                    continue
                if conn.pending:
                    if now - conn.opened > s.start_timeout_s:
                        call.log.warning("no start event within {:g} s; closing the media "
                                         "socket from {}", s.start_timeout_s, conn.ip)
                        asyncio.ensure_future(call.end("start_timeout",
                                                       f"no start event within {s.start_timeout_s:g} s"))
                    continue
                tel_in: CarrierIn = call.nodes[self.tel_in]  # type: ignore[assignment]
                if tel_in.messages != conn.seen:
                    conn.seen, conn.seen_at = tel_in.messages, now
                elif s.media_timeout_s and now - conn.seen_at > s.media_timeout_s:
                    asyncio.ensure_future(call.end(
                        "media_timeout", f"nothing received for {s.media_timeout_s:g} s"))
                    continue
                if s.max_call_s and now - conn.opened > s.max_call_s:
                    asyncio.ensure_future(call.hang_up(
                        "max_duration", f"the call reached its maximum of {s.max_call_s:g} s"))

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
        enabled = self.settings.carrier_names()
        if enabled and name not in enabled:
            raise web.HTTPNotFound(text=f"carrier {name[:40]!r} is not served here\n")
        try:
            return self.registry.get(name)
        except (ConfigError, PluginError) as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None

    async def livez(self, request: web.Request) -> web.Response:
        """Liveness: the process answers (true while draining too)."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: new calls are taken (false while draining or at capacity)."""
        if self.draining:
            return web.json_response({"ready": False, "why": "draining"}, status=503)
        if len(self.calls) >= self.settings.max_calls:
            return web.json_response({"ready": False, "why": "at capacity"}, status=503)
        return web.json_response({"ready": True})

    async def _signed(self, carrier: Any, request: web.Request, what: str,
                      purpose: Literal["webhook", "websocket"] = "webhook"
                      ) -> tuple[HttpRequest, bool | None] | web.Response:
        """The request as carrier hooks see it and whether its signature was checked (``True``)
        or checking is off/absent, or a 403 when its signature does not check out."""
        req = await self._http_request(request, websocket=purpose == "websocket")
        try:
            signed = carrier.authenticate(req, purpose)
        except AuthenticationError as exc:
            self.metrics.refused["signature"] += 1
            logger.warning("{} for {} from {} refused: {}", what, carrier.name,
                           self._remote(request), exc)
            return web.Response(status=403, text="signature check failed\n")
        return req, signed

    async def answer(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request)
        checked = await self._signed(carrier, request, "answer webhook")
        if isinstance(checked, web.Response):
            return checked
        req, _ = checked
        stream_url = self._public_url(request, websocket=True)
        stream_url = stream_url.split("?", 1)[0].rsplit("/answer/", 1)[0] + f"/media/{carrier.name}"
        parameters = dict(self.settings.answer_parameters)
        parameters[calltoken.PARAMETER] = self.call_tokens.issue(carrier.name)
        try:
            doc = carrier.answer_document(req, stream_url, parameters)
        except (PluginError, ConfigError) as exc:
            logger.error("answer webhook for {} failed: {}", carrier.name, exc)
            return web.Response(status=500, text="answer document failed\n")
        if doc is None:
            return web.Response(status=404, text=f"carrier {carrier.name} has no answer webhook\n")
        return web.Response(status=doc.status, text=doc.body, content_type=doc.content_type)

    async def events(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request)
        checked = await self._signed(carrier, request, "event webhook")
        if isinstance(checked, web.Response):
            return checked
        req, _ = checked
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
                           carrier.name, event.call_id[:80])
            return web.Response(status=404, text=f"no live call {event.call_id[:80]!r}\n")
        tel_in: CarrierIn = call.nodes[self.tel_in]  # type: ignore[assignment]
        traced = self._conns[call].trace if call in self._conns else None
        entered = traced.enter() if traced is not None else None
        try:
            for frame in event.frames:
                await tel_in.dispatch(frame)
        finally:
            if traced is not None:
                traced.leave(entered)
        if event.response is None:
            return web.Response(status=204)
        doc = event.response
        return web.Response(status=doc.status, text=doc.body, content_type=doc.content_type)

    # ----------------------------------------------------------------------------- operator API

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (see :mod:`telewire.metrics`)."""
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_TYPE})

    async def list_calls(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        return web.json_response([
            {"carrier": c.carrier.name, "call_id": c.context.call_id,
             "stream_id": c.context.stream_id, "started": c.context.started,
             "seconds": round(now - self._conns[c].opened, 1) if c in self._conns else None}
            for c in self.calls])

    def _find_call(self, carrier: str | None, call_id: str) -> CallGraph | web.Response:
        if carrier is not None:
            call = self.live.get((carrier, call_id))
            if call is None:
                return _json_error(404, f"no live call {call_id[:80]!r} on {carrier[:40]!r}")
            return call
        found = [c for (_, cid), c in self.live.items() if cid == call_id]
        if not found:
            return _json_error(404, f"no live call {call_id[:80]!r}")
        if len(found) > 1:
            names = sorted(c.carrier.name for c in found)
            return _json_error(409, f"call id {call_id[:80]!r} is live on {names}; name the "
                                    "carrier: /api/calls/{carrier}/{call_id}/…")
        return found[0]

    async def control(self, request: web.Request) -> web.Response:
        """Operator control: steer, interrupt or hang up one live call."""
        action = request.match_info["action"]
        if action not in ("steer", "interrupt", "hangup"):
            return _json_error(404, f"unknown action {action[:40]!r}; use steer, interrupt or "
                                    "hangup")
        found = self._find_call(request.match_info.get("carrier"), request.match_info["call_id"])
        if isinstance(found, web.Response):
            return found
        call = found
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError as exc:
            return _json_error(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _json_error(400, "the body must be a JSON object")
        if action == "steer":
            problem = _steer_problem(body)
            if problem:
                return _json_error(400, problem)
        traced = self._conns[call].trace if call in self._conns else None
        entered = traced.enter() if traced is not None else None  # what it starts is the call's
        try:
            if action == "steer":
                steer = SteerFrame(instructions=body.get("instructions"), voice=body.get("voice"))
                await call.inject("steer_in", steer)
                if traced is not None:
                    traced.steer(steer, source="operator")
            elif action == "interrupt":
                await call.inject("interrupt_in", InterruptFrame(source="operator",
                                                                 reason="operator"),
                                  carrier_side=True)
            else:
                asyncio.ensure_future(call.hang_up("operator", "hung up by an operator"))
            if action != "steer" and traced is not None:
                traced.operator(action)
        finally:
            if traced is not None:
                traced.leave(entered)
        call.log.info("operator: {} (from {})", action, self._remote(request))
        return web.json_response({"ok": True, "action": action})

    # ----------------------------------------------------------------------------- media

    def _admit(self, call: CallGraph, frame: StartFrame) -> StartFrame | str:
        """At the start event: check the one-time call token, refuse an id already live here,
        index the call by its id (for event webhooks and the operator API)."""
        conn = self._conns.get(call)
        for what, value in (("stream id", frame.stream_id), ("call id", frame.call_id),
                            ("account id", frame.account_id)):
            # the envelope checks these already; a carrier parsing by hand may not have
            problem = id_problem(value) if value or what == "stream id" else None
            if problem is not None:
                self.metrics.refused["bad_id"] += 1
                return f"carrier {call.carrier.name!r} started a call whose {what} {problem}"
        params = dict(frame.custom_parameters)
        token = params.pop(calltoken.PARAMETER, None)
        mode = self.settings.call_tokens
        required = call.carrier.answers_calls and (
            mode == "required" or (mode == "auto" and conn is not None and conn.signed is True))
        if required:
            problem = self.call_tokens.redeem(call.carrier.name, token)
            if problem is not None:
                self.metrics.refused["call_token"] += 1
                return problem
        key = (call.carrier.name, frame.call_id or frame.stream_id)
        if key[1]:
            other = self.live.get(key)
            if other is not None and other is not call:
                self.metrics.refused["duplicate_call_id"] += 1
                return f"call {key[1]!r} is already live on this server"
            self.live[key] = call
        if conn is not None and conn.pending:
            conn.pending = False
            self._count(self._pending_per_ip, conn.ip, -1)
            conn.seen_at = time.monotonic()
        if token is not None:
            call.context.custom_parameters = params
            frame = replace(frame, custom_parameters=params)
        if conn is not None and conn.trace is not None:
            conn.trace.start(frame)
        return frame

    def _untrack(self, call: CallGraph) -> None:
        self.calls.discard(call)
        key = (call.carrier.name, call.context.call_id or call.context.stream_id)
        if self.live.get(key) is call:
            del self.live[key]
        self.metrics.call_ended(call)
        conn = self._conns.pop(call, None)
        if conn is not None:
            self._count(self._per_ip, conn.ip, -1)
            if conn.pending:
                self._count(self._pending_per_ip, conn.ip, -1)

    @staticmethod
    def _count(counts: dict[str, int], ip: str, delta: int) -> None:
        n = counts.get(ip, 0) + delta
        if n > 0:
            counts[ip] = n
        else:
            counts.pop(ip, None)

    def _refuse_socket(self, carrier: Any, ip: str) -> web.Response | None:
        s = self.settings
        refused = self.metrics.refused
        if self.draining:
            refused["draining"] += 1
            return web.Response(status=503, text="server is draining\n")
        if carrier.name in self.unusable:
            return web.Response(status=501, text=f"{self.unusable[carrier.name]}\n")
        if len(self.calls) >= s.max_calls:
            refused["capacity"] += 1
            logger.warning("call refused: {} live calls is the limit", s.max_calls)
            return web.Response(status=503, text="at capacity\n")
        if self._pending_per_ip.get(ip, 0) >= s.max_pending_per_ip:
            refused["pending_per_ip"] += 1
            logger.warning("media socket from {} refused: {} of its sockets have not started "
                           "a call yet", ip, s.max_pending_per_ip)
            return web.Response(status=429, text="too many unstarted connections\n")
        if self._per_ip.get(ip, 0) >= (s.max_connections_per_ip or s.max_calls):
            refused["connections_per_ip"] += 1
            logger.warning("media socket from {} refused: {} connections from one address is "
                           "the limit", ip, s.max_connections_per_ip or s.max_calls)
            return web.Response(status=429, text="too many connections from this address\n")
        return None

    async def media(self, request: web.Request) -> web.StreamResponse:
        carrier = self._carrier(request)
        ip = self._remote(request)
        refusal = self._refuse_socket(carrier, ip)
        if refusal is not None:
            return refusal
        checked = await self._signed(carrier, request, "media socket", "websocket")
        if isinstance(checked, web.Response):
            return checked
        _, signed = checked
        envelope = self.graph.envelope
        protocols = (envelope.spec.subprotocol,) if envelope and envelope.spec.subprotocol else ()
        heartbeat = self.settings.heartbeat_s or None
        ws = web.WebSocketResponse(max_msg_size=self.settings.ws_max_message_bytes,
                                   compress=False, autoping=True, heartbeat=heartbeat,
                                   protocols=protocols)
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

        observers = self.observers() if self.observers else {}
        traced = self.tracing.new_call() if self.tracing is not None else None
        if traced is not None:
            observers = traced.observers(self.graph, observers)
        call = CallGraph(self.graph, carrier, send, observers, on_start=self._admit)
        tel_in: CarrierIn = call.nodes[self.tel_in]  # type: ignore[assignment]
        self.calls.add(call)
        self._conns[call] = _Conn(call=call, ip=ip, opened=time.monotonic(), signed=signed,
                                  trace=traced)
        self._count(self._per_ip, ip, 1)
        self._count(self._pending_per_ip, ip, 1)
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
            if traced is not None:
                traced.end(call.end_frame)
            closer.cancel()
            await ws.close()
            self._untrack(call)
        return ws

    async def _close_when_ended(self, call: CallGraph, ws: web.WebSocketResponse) -> None:
        await call.ended.wait()
        if not ws.closed:
            await ws.close()


def _steer_problem(body: Mapping[str, Any]) -> str | None:
    """Why an operator's steer body is refused, or ``None``."""
    unknown = sorted(set(body) - {"instructions", "voice"})
    if unknown:
        return f"steer takes instructions and/or voice, not {unknown[:5]}"
    instructions, voice = body.get("instructions"), body.get("voice")
    if instructions is None and voice is None:
        return "steer needs instructions and/or voice"
    if instructions is not None and (not isinstance(instructions, str)
                                     or len(instructions) > _MAX_INSTRUCTIONS):
        return f"instructions must be a string of at most {_MAX_INSTRUCTIONS} characters"
    if voice is not None and (not isinstance(voice, str) or not 0 < len(voice) <= _MAX_VOICE
                              or not voice.replace("-", "").replace("_", "").isalnum()):
        return f"voice must be a voice name (letters, digits, - and _, at most {_MAX_VOICE})"
    return None
