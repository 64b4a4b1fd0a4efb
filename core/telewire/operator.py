"""The live operator page (``GET /operator``) and its event stream (``GET /api/events``).

Depends on ``aiohttp``, ``loguru``, ``telewire.frames`` and ``telewire.redact``; only ``server``
depends on it.

How the page is authenticated. A browser cannot put a bearer header on a navigation, so the
page and its two assets (``/operator/app.js``, ``/operator/app.css``) are static, hold no call
data and need no token; they are served only while the operator API is on (404 otherwise, as
``/api/`` answers), with a strict policy: scripts and styles from this origin only, nothing
inline, no images, no framing, no form submission, no caching, no sniffing, no referrer. The
page's script asks for the token, keeps it in ``sessionStorage`` (this tab only; never in a URL,
a cookie or local storage) and sends it as ``Authorization: Bearer`` on every request: the call
list, the actions (the existing JSON-only ``/api/calls/…`` routes) and the event stream, which is
server-sent events read with ``fetch()`` streaming so that it carries the header too. Everything
under ``/api/`` stays behind the server's operator guard. The script writes call data into the
page only as text (``textContent``): a transcript is whatever a caller said.

The event feed is an interface (:class:`EventFeed`: ``publish(call, event)``, ``subscribe(call)``)
so that a control plane can carry events of calls on other processes; :class:`LocalFeed` is the
in-process one. Each call's :class:`CallTap` turns the frames of the ports it observes
(transcripts, usage, interrupts, errors; never an audio port) into events. Bounded throughout:
a subscriber's queue has a limit (a slow browser loses events and is told with a ``dropped``
event, never slowing a call), the number of open streams is capped, an idle stream carries a
heartbeat, and a write that does not complete in time closes the stream.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import secrets
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol

from aiohttp import web
from loguru import logger

from telewire.frames import (AudioFrame, ErrorFrame, Frame, InterruptFrame, StartFrame,
                             TranscriptFrame, UsageFrame)
from telewire.redact import mask_text

if TYPE_CHECKING:
    from telewire.control import ControlPlane
    from telewire.graph import CallGraph, Graph, Observer

__all__ = ["CallKey", "CallTap", "ControlPlaneFeed", "EventFeed", "LocalFeed", "OperatorPage",
           "Subscription"]

#: a live call as the operator API names it: ``(carrier, call id)`` (the stream id when the
#: carrier gives no call id), the key of ``TelewireServer.live``.
CallKey = tuple[str, str]
#: one event: a JSON object with at least ``type``, ``carrier`` and ``call_id``.
Event = Mapping[str, Any]

#: the server's admission of a starting call (``CallGraph.on_start``): the start frame to run
#: the call with, or why it is refused
Admission = Callable[["CallGraph", StartFrame],
                     "StartFrame | str | Awaitable[StartFrame | str]"]
#: the longest text an event carries (a transcript line, an error message)
MAX_TEXT = 4000
#: what the page's headers forbid: see the module docstring
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'none'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Accel-Buffering": "no",  # a proxy must not hold events back
}
#: the page's files (``telewire/data/operator/``) and their content types
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: frames a tap turns into events; a port that also carries audio is never observed
_WATCHED = (TranscriptFrame, UsageFrame, InterruptFrame, ErrorFrame)


# ----------------------------------------------------------------------------- the feed


class Subscription:
    """One subscriber's bounded queue of events, filled by a feed and read by one stream.

    A feed calls :meth:`offer` (never blocks). When the queue is full the events still queued
    are thrown away, and the reader's next event is ``{"type": "dropped", "count": n}`` (then the
    new one): its view is stale and it should resubscribe (a subscription starts with the
    retained events of the live calls, so resubscribing resynchronises).

    Args:
        call: the one call subscribed to, or ``None`` for every call.
        limit: the most events queued at once.
        on_close: called with the subscription once it is closed (the feed forgets it).
    """

    def __init__(self, call: CallKey | None, limit: int,
                 on_close: Callable[["Subscription"], None] | None = None) -> None:
        self.call = call
        self.limit = limit
        self.dropped = 0
        self.closed = False
        self._events: collections.deque[Event] = collections.deque()
        self._lost = 0
        self._ready = asyncio.Event()
        self._on_close = on_close

    def wants(self, call: CallKey) -> bool:
        return self.call is None or self.call == call

    def offer(self, event: Event) -> None:
        """Queue ``event``, or drop it (and what is queued) when the queue is full."""
        if self.closed:
            return
        if len(self._events) >= self.limit:
            lost = len(self._events)
            self._events.clear()
            self._lost += lost
            self.dropped += lost
        self._events.append(event)
        self._ready.set()

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; ``None`` once closed or when ``timeout`` seconds pass without one."""
        while not self.closed:
            if self._lost:
                lost, self._lost = self._lost, 0
                return {"type": "dropped", "count": lost}
            if self._events:
                return self._events.popleft()
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return None

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._events.clear()
        self._ready.set()
        if self._on_close is not None:
            self._on_close(self)


class EventFeed(Protocol):
    """Where live calls' events go and where the operator page's streams read them.

    The in-process :class:`LocalFeed` is the default; a control plane (Redis) implements the
    same three methods so that a page on one process sees calls on every process.
    """

    def publish(self, call: CallKey, event: Mapping[str, Any]) -> None:
        """Send one event of ``call`` to its subscribers. Synchronous and quick: it runs in a
        port observer, on the call's path; it must never block or raise."""

    def subscribe(self, call: CallKey | None = None) -> Subscription:
        """A new subscription to ``call``'s events (``None``: every call's), starting with the
        events retained for the live calls it covers. Close it when done."""

    def close(self) -> None:
        """Close every subscription (the server is stopping)."""


class LocalFeed:
    """The in-process :class:`EventFeed`.

    Each event gets ``seq`` (increasing within this feed), ``carrier`` and ``call_id``. For each
    live call it retains the call's ``call`` event, its last ``usage`` and its last ``retain``
    other events, replayed to a new subscriber; a call's ``ended`` event forgets them.

    Args:
        queue_limit: each subscriber's queue limit (on top of its replay).
        retain: the events retained per live call besides its state and usage.
    """

    def __init__(self, *, queue_limit: int = 256, retain: int = 50) -> None:
        self.queue_limit = queue_limit
        self.retain = retain
        #: tells a subscriber whether ``seq`` numbers it saw before are from this feed
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._subs: set[Subscription] = set()
        self._state: dict[CallKey, dict[str, Event]] = {}
        self._recent: dict[CallKey, collections.deque[Event]] = {}

    def publish(self, call: CallKey, event: Mapping[str, Any]) -> None:
        self._seq += 1
        out = {**event, "seq": self._seq, "carrier": call[0], "call_id": call[1]}
        kind = out.get("type")
        if kind == "call" and out.get("state") == "ended":
            self._state.pop(call, None)
            self._recent.pop(call, None)
        elif kind in ("call", "usage"):
            self._state.setdefault(call, {})[kind] = out
        else:
            recent = self._recent.get(call)
            if recent is None:
                recent = self._recent[call] = collections.deque(maxlen=self.retain)
            recent.append(out)
        for sub in self._subs:
            if sub.wants(call):
                sub.offer(out)

    def subscribe(self, call: CallKey | None = None) -> Subscription:
        replay: list[Event] = [{"type": "hello", "epoch": self.epoch, "seq": self._seq}]
        for key, state in self._state.items():
            if call is None or key == call:
                replay += sorted([*state.values(), *self._recent.get(key, ())],
                                 key=lambda e: e["seq"])
        sub = Subscription(call, self.queue_limit + len(replay), on_close=self._subs.discard)
        for event in replay:
            sub.offer(event)
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)


class ControlPlaneFeed:
    """An :class:`EventFeed` over a control plane's events (:mod:`telewire.control`), so that
    the page of any process sees the calls of every process (Redis).

    What the control plane gives: events published while subscribed, no history (a page opened
    mid-call shows the transcript from then on), the oldest dropped first when a subscriber falls
    behind (told here as a ``dropped`` event). Publishing hands each event to a task: the
    control plane's ``publish_event`` is a coroutine, and an observer may not wait.

    Args:
        control: the server's control plane.
        queue_limit: each subscriber's queue limit.
    """

    def __init__(self, control: "ControlPlane", *, queue_limit: int = 256) -> None:
        self.control = control
        self.queue_limit = queue_limit
        self._subs: set[Subscription] = set()
        self._tasks: set[asyncio.Future[None]] = set()

    def publish(self, call: CallKey, event: Mapping[str, Any]) -> None:
        try:
            task = asyncio.ensure_future(self.control.publish_event(call[0], call[1], event))
        except RuntimeError:  # no running loop: nothing can read it either
            return
        self._tasks.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: "asyncio.Future[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("operator page: a call event was not published: {}", task.exception())

    def subscribe(self, call: CallKey | None = None) -> Subscription:
        source = self.control.subscribe(carrier=call[0] if call else None,
                                        call_id=call[1] if call else None,
                                        maxsize=self.queue_limit)

        async def pump() -> None:
            seen = 0
            try:
                async for event in source:
                    if source.dropped != seen:
                        sub.offer({"type": "dropped", "count": source.dropped - seen})
                        seen = source.dropped
                    sub.offer({**event.data, "carrier": event.carrier, "call_id": event.call_id})
            finally:
                sub.close()

        def closed(_: Subscription) -> None:
            self._subs.discard(sub)
            pumping.cancel()
            asyncio.ensure_future(source.close())

        sub = Subscription(call, self.queue_limit, on_close=closed)
        sub.offer({"type": "hello", "epoch": secrets.token_hex(4)})
        pumping = asyncio.ensure_future(pump())
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()


# ----------------------------------------------------------------------------- per call


class CallTap:
    """One call's events: the observers to give its :class:`~telewire.graph.CallGraph`, an
    ``on_start`` that wraps the server's admission, and :meth:`end`.

    Args:
        feed: where the events go.
        graph: the call's graph; every output port that can carry a transcript, usage,
            interrupt or error frame (and no audio) is observed.
        base: the call's other observers, kept.
        admit: the server's admission (``CallGraph.on_start``).
    """

    def __init__(self, feed: EventFeed, graph: "Graph",
                 base: Mapping[tuple[str, str], list["Observer"]],
                 admit: Admission) -> None:
        self.feed = feed
        self.key: CallKey | None = None
        self._admit = admit
        observers = {k: list(v) for k, v in base.items()}
        for name, spec in graph.nodes.items():
            for port, types in spec.cls.outputs.items():
                if (any(issubclass(t, _WATCHED) for t in types)
                        and not any(issubclass(t, AudioFrame) for t in types)):
                    observers.setdefault((name, port), []).append(self._observe)
        self.observers = observers

    async def on_start(self, call: "CallGraph", frame: StartFrame) -> StartFrame | str:
        """The server's admission, then the call's ``live`` event if it was admitted."""
        admitted = self._admit(call, frame)
        if inspect.isawaitable(admitted):
            admitted = await admitted
        if not isinstance(admitted, str):
            self.key = (call.carrier.name, admitted.call_id or admitted.stream_id)
            self.feed.publish(self.key, {"type": "call", "state": "live",
                                         "stream_id": admitted.stream_id, "at": time.time()})
        return admitted

    def end(self, call: "CallGraph") -> None:
        """The call has ended: its last event."""
        key, self.key = self.key, None
        if key is None:
            return
        end = call.end_frame
        self.feed.publish(key, {"type": "call", "state": "ended", "at": time.time(),
                                "reason": end.reason if end else "",
                                "detail": mask_text(end.detail[:MAX_TEXT]) if end else ""})

    def _observe(self, node: str, port: str, frame: Frame) -> None:
        key = self.key
        if key is None:
            return
        event: dict[str, Any]
        if isinstance(frame, TranscriptFrame):
            event = {"type": "transcript", "role": frame.role, "text": frame.text[:MAX_TEXT],
                     "final": frame.final}
        elif isinstance(frame, UsageFrame):
            event = {"type": "usage", "cost_usd": frame.cost_usd,
                     "call_cost_usd": frame.call_cost_usd}
        elif isinstance(frame, InterruptFrame):
            event = {"type": "interrupt", "source": frame.source, "reason": frame.reason}
        elif isinstance(frame, ErrorFrame):
            event = {"type": "error", "source": frame.source, "fatal": frame.fatal,
                     "message": mask_text(frame.message[:MAX_TEXT])}
        else:
            return
        event["node"] = node
        event["at"] = time.time()
        self.feed.publish(key, event)


# ----------------------------------------------------------------------------- HTTP


class OperatorPage:
    """The page's routes and event streams, and the taps of the server's calls.

    Args:
        enabled: whether the operator API is on (the page answers 404 when it is not).
        control: the server's control plane: its events carry the feed (a
            :class:`ControlPlaneFeed`) unless it is the in-process one (``kind == "local"``),
            where a :class:`LocalFeed` does, with the replay a page opened mid-call needs.
        feed: the event feed, overriding what ``control`` implies.
        max_streams: the most event streams open at once (503 beyond it).
        heartbeat_s: an idle stream's keep-alive comment every this many seconds.
        write_timeout_s: a stream whose client does not take an event within this long is
            closed.
    """

    def __init__(self, *, enabled: bool, control: "ControlPlane | None" = None,
                 feed: EventFeed | None = None, max_streams: int = 16,
                 heartbeat_s: float = 15.0, write_timeout_s: float = 30.0) -> None:
        self.enabled = enabled
        if feed is None:
            local = control is None or getattr(control, "kind", "local") == "local"
            feed = LocalFeed() if local else ControlPlaneFeed(control)  # type: ignore[arg-type]
        self.feed: EventFeed = feed
        self.max_streams = max_streams
        self.heartbeat_s = heartbeat_s
        self.write_timeout_s = write_timeout_s
        self._streams: set[Subscription] = set()
        self._assets: dict[str, bytes] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/operator", self.page),
            web.get("/operator/{asset}", self.asset),
            web.get("/api/events", self.events),
            web.get("/api/calls/{carrier}/{call_id}/events", self.events),
        ]

    def tap(self, graph: "Graph", base: Mapping[tuple[str, str], list["Observer"]],
            admit: Admission) -> CallTap:
        """A new call's tap (see :class:`CallTap`)."""
        return CallTap(self.feed, graph, base, admit)

    def close(self) -> None:
        """End every open stream (the server is stopping)."""
        for sub in list(self._streams):
            sub.close()
        self.feed.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def _file(self, name: str) -> bytes:
        body = self._assets.get(name)
        if body is None:
            body = (resources.files("telewire") / "data" / "operator" / name).read_bytes()
            self._assets[name] = body
        return body

    async def page(self, request: web.Request) -> web.Response:
        return await self._serve("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in _ASSETS or name == "index.html":
            return web.json_response({"error": "not found"}, status=404)
        return await self._serve(name)

    async def _serve(self, name: str) -> web.Response:
        if not self.enabled:
            return web.json_response({"error": "the operator page is off: set "
                                               "TELEWIRE_OPERATOR_TOKEN"}, status=404)
        return web.Response(body=self._file(name),
                            headers={**PAGE_HEADERS, "Content-Type": _ASSETS[name]})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: every call's (``/api/events``) or one call's. Each event is one
        ``data:`` line of JSON; an idle stream gets a ``:`` comment every heartbeat."""
        if len(self._streams) >= self.max_streams:
            logger.warning("operator page: event stream refused, {} are open (the limit)",
                           len(self._streams))
            return web.json_response({"error": f"{self.max_streams} event streams are open, "
                                               "the limit; close one"},
                                     status=503, headers={"Retry-After": "5"})
        carrier = request.match_info.get("carrier")
        call = (carrier, request.match_info["call_id"]) if carrier is not None else None
        sub = self.feed.subscribe(call)
        self._streams.add(sub)
        resp = web.StreamResponse(headers=_STREAM_HEADERS)
        try:
            await resp.prepare(request)
            await self._write(resp, f"retry: 2000\n: heartbeat every {self.heartbeat_s:g} s\n\n"
                              .encode())
            while True:
                event = await sub.next(self.heartbeat_s)
                if event is not None:
                    data = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
                elif sub.closed:
                    break
                else:
                    data = b":\n\n"
                await self._write(resp, data)
                if event is not None and event.get("type") == "dropped":
                    logger.warning("operator page: a slow event stream lost {} event(s)",
                                   event.get("count"))
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("operator page: event stream closed: {}", type(exc).__name__)
        finally:
            sub.close()
            self._streams.discard(sub)
        return resp

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        async with asyncio.timeout(self.write_timeout_s):
            await resp.write(data)
