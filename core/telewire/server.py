"""The HTTP/WebSocket server: carrier media sockets, answer webhooks, probes and the operator API.

Depends on ``telewire.graph``, ``telewire.registry``, ``telewire.settings``, ``telewire.calltoken``,
``telewire.control`` and ``telewire.errors``; only ``cli`` and ``testing`` depend on it.

Routes on the public (carrier-facing) port:
    ``GET /media/{carrier}``          WebSocket upgrade: one call per connection.
    ``GET|POST /answer/{carrier}``    the carrier's incoming-call webhook (TwiML, BXML …).
    ``POST /events/{carrier}``        events the carrier delivers by webhook (Bandwidth DTMF),
                                      routed into the live call they name.
    ``POST /status/{carrier}``        call status callbacks of dialled calls (Twilio
                                      ``StatusCallback``, answering-machine ``AnsweredBy``).
    ``GET /livez``, ``GET /readyz``   liveness (the process serves) and readiness (it takes calls).

Every call is registered on the control plane (:mod:`telewire.control`: in-process, or Redis
with ``TELEWIRE_CONTROL_URL``), so the operator API and event webhooks reach a call whichever
process of the cluster holds it, and ``TELEWIRE_MAX_CLUSTER_CALLS`` caps the whole cluster.

The operator API, behind ``Authorization: Bearer <TELEWIRE_OPERATOR_TOKEN>`` (off, 404, without a
token; on the admin listener alone when ``TELEWIRE_ADMIN_PORT`` is set):
    ``GET /api/calls``                the live calls (of every process on the control plane).
    ``POST /api/calls/[{carrier}/]{call_id}/steer|interrupt|hangup|transfer``
                                      operator control of one live call; JSON bodies only
                                      (steer: ``{"instructions": …, "voice": …}``; transfer:
                                      ``{"target": …}``, one of ``rt.config.transfer_targets``).
    ``GET /api/events``, ``GET /api/calls/{carrier}/{call_id}/events``
                                      live calls' events (server-sent events).
    ``GET /operator``                 the operator page (static; its script sends the token).
    ``GET /metrics``                  Prometheus metrics (the operator token, or the
                                      read-only ``TELEWIRE_METRICS_TOKEN``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import socket
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from aiohttp import WSMsgType, web
from loguru import logger

from telewire import calltoken, transfer
from telewire.carrier import HttpRequest
from telewire.control import CallEntry, Command, ControlPlane, Reply, control_plane
from telewire.envelope import id_problem
from telewire.errors import AuthenticationError, CarrierError, ConfigError, PluginError
from telewire.frames import InterruptFrame, StartFrame, SteerFrame
from telewire.graph import CallGraph, Graph, Observer
from telewire.metrics import CONTENT_TYPE as METRICS_TYPE
from telewire.metrics import ServerMetrics
from telewire.nodes.carrier_in import CarrierIn
from telewire.operator import OperatorPage
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
        control: the control plane (default: the one the settings name,
            :func:`telewire.control.control_plane`).
    """

    def __init__(self, settings: ServerSettings, graph: Graph, registry: CarrierRegistry,
                 observers: ObserverFactory | None = None,
                 tracing: "Tracing | None" = None,
                 control: ControlPlane | None = None) -> None:
        self.settings = settings
        #: the live-call registry, commands and call events across processes
        self.control = control if control is not None else control_plane(settings)
        self.worker_id = self.control.worker_id
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
        #: the registry entries of this process's started calls
        self._entries: dict[CallGraph, CallEntry] = {}
        self._per_ip: dict[str, int] = {}
        self._pending_per_ip: dict[str, int] = {}
        self._head_timers: dict[Any, asyncio.TimerHandle] = {}
        self._operator_token = (settings.operator_token.get_secret_value().encode()
                                if settings.operator_token else None)
        self._metrics_tokens = tuple(
            t.get_secret_value().encode()
            for t in (settings.operator_token, settings.metrics_token) if t is not None)
        self.operator = OperatorPage(enabled=self._operator_token is not None,
                                     control=self.control)
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
            web.post("/status/{carrier}", self.status),
            *self._routes_probes(),
        ]

    def _routes_api(self) -> list[web.RouteDef]:
        return [
            *self.operator.routes(),
            web.get("/metrics", self.metrics_page),
            web.get("/api/calls", self.list_calls),
            web.post("/api/calls/{call_id}/{action}", self.control_call),
            web.post("/api/calls/{carrier}/{call_id}/{action}", self.control_call),
        ]

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self, *, sock: socket.socket | None = None, reuse_port: bool = False) -> int:
        """Start listening; returns the bound port. Logs each carrier's start-up warnings.

        Args:
            sock: a listening socket to serve on instead of binding ``host:port`` (a
                supervisor's, shared by its workers).
            reuse_port: bind ``host:port`` with ``SO_REUSEPORT``, beside other processes
                doing the same (the kernel spreads connections between them).
        """
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
        await self.control.start(self.execute)
        if self.control.kind != "local":
            logger.info("worker {} on the {} control plane", self.worker_id, self.control.kind)
        self.port = await self._listen(self.app, self.settings.host, self.settings.port,
                                       sock=sock, reuse_port=reuse_port)
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

    async def _listen(self, app: web.Application, host: str, port: int, *,
                      sock: socket.socket | None = None, reuse_port: bool = False) -> int:
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

        if sock is not None:
            server = await loop.create_server(protocol, sock=sock)
        else:
            server = await loop.create_server(protocol, host, port, reuse_address=True,
                                              reuse_port=reuse_port or None,
                                              family=socket.AF_UNSPEC)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def carrier_names(self) -> list[str]:
        """The carriers this process serves (``TELEWIRE_CARRIERS``, or every installed one)."""
        enabled = self.settings.carrier_names()
        return [n for n in self.registry.names() if not enabled or n in enabled]

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Drain and stop: refuse new calls (``/readyz`` says not ready), let live calls finish
        for up to the drain timeout, have the rest say the agent's drain goodbye and hang up
        (up to ``TELEWIRE_DRAIN_GOODBYE_S``), end what is left, then close the listeners, leave
        the control plane and wait for the archives."""
        self.draining = True
        timeout = self.settings.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if self.calls:
            logger.info("draining {} live call(s) for up to {:.0f} s", len(self.calls), timeout)
            await asyncio.gather(*(self.control.update(replace(e, state="draining"))
                                   for e in self._entries.values()))
            waits = [asyncio.ensure_future(c.ended.wait()) for c in list(self.calls)]
            _, pending = await asyncio.wait(waits, timeout=timeout) if waits else (set(), set())
            for p in pending:
                p.cancel()
            live = [c for c in list(self.calls) if not c.ended.is_set()]
            goodbye_s = self.settings.drain_goodbye_s
            if live and goodbye_s:
                logger.info("drain timeout: {} call(s) still live; saying goodbye and hanging "
                            "up (up to {:g} s)", len(live), goodbye_s)
                winds = [asyncio.ensure_future(c.wind_down("shutdown", "server stopping",
                                                           timeout_s=goodbye_s)) for c in live]
                _, late = await asyncio.wait(winds, timeout=goodbye_s + 5)
                for w in late:
                    w.cancel()
            for call in list(self.calls):
                await call.end("shutdown", "server stopping")
        self.operator.close()
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
        await self.control.close()
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
        """Readiness: this process takes new calls (false while draining or at its own
        ``max_calls``). The cluster cap is left out on purpose: a full cluster would make every
        process unready at once and cut off the webhooks of the calls already live, so it is
        enforced per call by :meth:`_refusal` instead (docs/deployment.md)."""
        if self.draining:
            return web.json_response({"ready": False, "why": "draining"}, status=503)
        if len(self.calls) >= self.settings.max_calls:
            return web.json_response({"ready": False, "why": "at capacity"}, status=503)
        return web.json_response({"ready": True, "worker": self.worker_id})

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

    async def _refusal(self) -> web.Response | None:
        """A 503 (with ``Retry-After``) the carrier can fail over on, when this process drains,
        is at ``TELEWIRE_MAX_CALLS`` or the cluster at ``TELEWIRE_MAX_CLUSTER_CALLS``."""
        refused = self.metrics.refused
        if self.draining:
            refused["draining"] += 1
            return web.Response(status=503, text="server is draining\n",
                                headers={"Retry-After": "5"})
        if len(self.calls) >= self.settings.max_calls:
            refused["capacity"] += 1
            logger.warning("call refused: {} live calls is the limit", self.settings.max_calls)
            return web.Response(status=503, text="at capacity\n", headers={"Retry-After": "5"})
        cap = self.settings.max_cluster_calls
        if cap:
            try:
                live = await self.control.count()
            except Exception as exc:  # the control plane blinked: the process cap still holds
                logger.warning("cluster call count unavailable: {}", type(exc).__name__)
                return None
            if live >= cap:
                refused["cluster_capacity"] += 1
                logger.warning("call refused: {} live calls in the cluster is the limit", cap)
                return web.Response(status=503, text="cluster at capacity\n",
                                    headers={"Retry-After": "5"})
        return None

    async def answer(self, request: web.Request) -> web.Response:
        carrier = self._carrier(request)
        checked = await self._signed(carrier, request, "answer webhook")
        if isinstance(checked, web.Response):
            return checked
        refusal = await self._refusal()
        if refusal is not None:
            return refusal
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
        if call is not None:
            reply = await self._dispatch_event(call, event)
        else:  # held by another process, or by none: the control plane knows
            forwarded = {"method": req.method, "url": req.url, "headers": dict(req.headers),
                         "form": [list(p) for p in req.form], "query": [list(p) for p in req.query],
                         "body": base64.b64encode(req.body).decode("ascii")}
            reply = await self.control.send(Command(action="webhook", call_id=event.call_id,
                                                    carrier=carrier.name,
                                                    body={"request": forwarded}))
            if reply.status == 404:
                logger.warning("event webhook for {} names call {!r}, which is not live",
                               carrier.name, event.call_id[:80])
                return web.Response(status=404, text=f"no live call {event.call_id[:80]!r}\n")
        if reply.status == 204:
            return web.Response(status=204)
        return web.Response(status=reply.status, text=reply.body, content_type=reply.content_type)

    async def status(self, request: web.Request) -> web.Response:
        """A dialled call's status callback (:mod:`telewire.dial`), checked and parsed like an
        event webhook. Call progress carries nothing for the call and is acknowledged (``204``);
        a callback with frames (an ``AnsweredByFrame``) goes into the call like an event
        webhook's, wherever it is live (``204`` too when it is live nowhere)."""
        carrier = self._carrier(request)
        checked = await self._signed(carrier, request, "status callback")
        if isinstance(checked, web.Response):
            return checked
        try:
            event = carrier.parse_webhook(checked[0])
        except CarrierError as exc:
            logger.error("status callback for {} rejected: {}", carrier.name, exc)
            return web.Response(status=400, text=f"{exc}\n")
        except PluginError as exc:
            logger.error("status callback for {} failed: {}", carrier.name, exc)
            return web.Response(status=500, text="status callback failed\n")
        if event is None:
            return web.Response(status=404, text=f"carrier {carrier.name} has no status "
                                                 "callbacks\n")
        if not event.frames:
            return web.Response(status=204)
        routed = await self.events(request)
        return web.Response(status=204) if routed.status == 404 else routed

    async def _event_here(self, call: CallGraph, body: Mapping[str, Any]) -> Reply:
        """A carrier's event webhook another process received for a call held here: parse the
        request again with the carrier (the boundary checks it here too) and dispatch it."""
        raw = body.get("request")
        try:
            assert isinstance(raw, dict)
            req = HttpRequest(
                method=str(raw["method"]), url=str(raw["url"]),
                headers={str(k).lower(): str(v) for k, v in dict(raw["headers"]).items()},
                form=tuple((str(k), str(v)) for k, v in raw["form"]),
                query=tuple((str(k), str(v)) for k, v in raw["query"]),
                body=base64.b64decode(str(raw["body"]), validate=True))
        except (AssertionError, KeyError, TypeError, ValueError):
            return Reply.error(400, "a forwarded event webhook request is malformed")
        try:  # its signature again: a forged message in Redis cannot inject frames
            call.carrier.authenticate(req, "webhook")
        except AuthenticationError as exc:
            logger.warning("forwarded event webhook for {} refused: {}", call.carrier.name, exc)
            return Reply(status=403, body="signature check failed\n", content_type="text/plain")
        try:
            event = call.carrier.parse_webhook(req)
        except CarrierError as exc:
            return Reply(status=400, body=f"{exc}\n", content_type="text/plain")
        except PluginError as exc:
            logger.error("event webhook for {} failed: {}", call.carrier.name, exc)
            return Reply(status=500, body="event webhook failed\n", content_type="text/plain")
        if event is None or event.call_id != (call.context.call_id or call.context.stream_id):
            return Reply.error(404, "the forwarded event names another call")
        return await self._dispatch_event(call, event)

    async def _dispatch_event(self, call: CallGraph, event: Any) -> Reply:
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
            return Reply(status=204, body="", content_type="text/plain")
        doc = event.response
        return Reply(status=doc.status, body=doc.body, content_type=doc.content_type)

    # ----------------------------------------------------------------------------- operator API

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (see :mod:`telewire.metrics`)."""
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_TYPE})

    async def list_calls(self, request: web.Request) -> web.Response:
        """This process's calls (with their socket's age), then the other processes' from the
        control plane's registry."""
        now, wall = time.monotonic(), time.time()
        rows: list[dict[str, Any]] = []
        for c in self.calls:
            entry = self._entries.get(c)
            rows.append({
                "carrier": c.carrier.name, "call_id": c.context.call_id,
                "stream_id": c.context.stream_id, "started": c.context.started,
                "seconds": round(now - self._conns[c].opened, 1) if c in self._conns else None,
                "worker": self.worker_id,
                "state": entry.state if entry is not None else "starting"})
        try:
            entries = await self.control.calls()
        except Exception as exc:
            logger.warning("operator API: the control plane's registry is unavailable: {}",
                           type(exc).__name__)
            entries = []
        rows += [{"carrier": e.carrier, "call_id": e.call_id, "stream_id": e.stream_id or None,
                  "started": True, "seconds": round(max(0.0, wall - e.started), 1),
                  "worker": e.worker, "state": e.state}
                 for e in entries if e.worker != self.worker_id]
        return web.json_response(rows)

    def _find_call(self, carrier: str | None, call_id: str) -> CallGraph | Reply:
        if carrier is not None:
            call = self.live.get((carrier, call_id))
            if call is None:
                return Reply.error(404, f"no live call {call_id[:80]!r} on {carrier[:40]!r}")
            return call
        found = [c for (_, cid), c in self.live.items() if cid == call_id]
        if not found:
            return Reply.error(404, f"no live call {call_id[:80]!r}")
        if len(found) > 1:
            names = sorted(c.carrier.name for c in found)
            return Reply.error(409, f"call id {call_id[:80]!r} is live on {names}; name the "
                                    "carrier: /api/calls/{carrier}/{call_id}/…")
        return found[0]

    async def control_call(self, request: web.Request) -> web.Response:
        """Operator control: steer, interrupt, hang up or transfer one live call, in whichever
        process of the cluster holds it (the control plane carries the command and its answer)."""
        action = request.match_info["action"]
        if action not in ("steer", "interrupt", "hangup", "transfer"):
            return _json_error(404, f"unknown action {action[:40]!r}; use steer, interrupt, "
                                    "hangup or transfer")
        carrier, call_id = request.match_info.get("carrier"), request.match_info["call_id"]
        problem = id_problem(call_id) or (id_problem(carrier) if carrier is not None else None)
        if problem is not None:
            return _json_error(404, f"no live call {call_id[:80]!r}")
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
        elif action == "transfer":
            status, answer = self._transfer_target(body)
            if status != 200:
                return _json_error(status, answer)
            body = {"target": answer}
        else:
            body = {}
        body["from"] = self._remote(request)
        try:
            command = Command(action=action, call_id=call_id, carrier=carrier, body=body)
        except ValueError:
            return _json_error(404, f"no live call {call_id[:80]!r}")
        reply = await self.control.send(command)
        if action == "hangup" and reply.status == 404:  # idempotent: the call is over already
            return web.json_response({"ok": True, "action": action, "live": False})
        return web.Response(status=reply.status, text=reply.body,
                            content_type=reply.content_type)

    async def execute(self, command: Command) -> Reply:
        """Run a control-plane command on a call this process holds (the plane's handler)."""
        found = self._find_call(command.carrier, command.call_id)
        if isinstance(found, Reply):
            return found
        call = found
        if command.action == "webhook":
            return await self._event_here(call, command.body)
        body = command.body
        if command.action == "steer":
            problem = _steer_problem({k: v for k, v in body.items() if k != "from"})
            if problem:
                return Reply.error(400, problem)
        traced = self._conns[call].trace if call in self._conns else None
        entered = traced.enter() if traced is not None else None  # what it starts is the call's
        try:
            if command.action == "steer":
                steer = SteerFrame(instructions=body.get("instructions"), voice=body.get("voice"))
                await call.inject("steer_in", steer)
                if traced is not None:
                    traced.steer(steer, source="operator")
            elif command.action == "interrupt":
                await call.inject("interrupt_in", InterruptFrame(source="operator",
                                                                 reason="operator"),
                                  carrier_side=True)
            elif command.action == "transfer":
                status, target = self._transfer_target(body)  # checked here too: the boundary
                if status != 200:
                    return Reply.error(status, target)
                failed = await call.transfer(target)
                if failed is not None:
                    return Reply.error(502, f"transfer failed: {failed}")
            else:
                asyncio.ensure_future(call.hang_up("operator", "hung up by an operator"))
            if command.action != "steer" and traced is not None:
                traced.operator(command.action)
        finally:
            if traced is not None:
                traced.leave(entered)
        origin = body.get("from")
        call.log.info("operator: {} (from {})", command.action,
                      origin if isinstance(origin, str) and _ADDRESS.fullmatch(origin)
                      else "the control plane")
        return Reply.json(200, {"ok": True, "action": command.action})

    def _transfer_target(self, body: Mapping[str, Any]) -> tuple[int, str]:
        """``(200, target)`` when an operator's transfer body names a target the graph's
        ``transfer_targets`` allow (normalized), else ``(400 or 403, why)``."""
        target = body.get("target")
        if set(body) - {"target", "from"} or not isinstance(target, str):
            return 400, 'transfer takes {"target": "+15551234567"} (or a sip: address)'
        patterns = [p for spec in self.graph.nodes.values()
                    for p in getattr(spec.config, "transfer_targets", ())]
        why, shown = transfer.refusal(target, patterns)
        if why is not None:
            logger.warning("operator: transfer to {} refused: {}", shown, why)
            return 403, f"transfer refused: {why}"
        return 200, shown

    # ----------------------------------------------------------------------------- media

    async def _admit(self, call: CallGraph, frame: StartFrame) -> StartFrame | str:
        """At the start event: check the one-time call token, refuse an id already live here,
        register the call on the control plane (within the cluster cap) and index it by its
        id (for event webhooks and the operator API)."""
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
            entry = CallEntry(carrier=key[0], call_id=key[1], stream_id=frame.stream_id or "",
                              worker=self.worker_id, started=time.time(),
                              state="draining" if self.draining else "live")
            self.live[key] = call  # before the await: a second start of this id is refused
            if not await self.control.admit(entry, self.settings.max_cluster_calls):
                if self.live.get(key) is call:
                    del self.live[key]
                self.metrics.refused["cluster_capacity"] += 1
                return (f"the cluster is at TELEWIRE_MAX_CLUSTER_CALLS "
                        f"({self.settings.max_cluster_calls} live calls)")
            if call.ended.is_set():  # the socket went away while we registered it
                await self.control.remove(*key)
                if self.live.get(key) is call:
                    del self.live[key]
                return "the call ended while it was being admitted"
            self._entries[call] = entry
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

    def _untrack(self, call: CallGraph) -> CallEntry | None:
        """Forget an ended call; returns its registry entry, for the caller to remove."""
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
        return self._entries.pop(call, None)

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
        refusal = self._refuse_socket(carrier, ip) or await self._refusal()
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
        tap = self.operator.tap(self.graph, observers, self._admit)
        call = CallGraph(self.graph, carrier, send, tap.observers, on_start=tap.on_start)
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
            tap.end(call)
            closer.cancel()
            await ws.close()
            entry = self._untrack(call)
            if entry is not None:
                await self.control.remove(*entry.key)
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
