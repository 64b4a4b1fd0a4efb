"""The control plane: the live-call registry, operator commands and call events across processes.

Depends on ``telewire.envelope`` (id checks), ``telewire.errors`` and ``telewire.redact``; the
server depends on it. Redis (``redis>=5``, the ``control`` extra) is imported only by
:class:`RedisControlPlane`.

One server process holds a call (its media socket). Everything else that concerns the call (the
operator API, a carrier's event webhook, an operator page) may arrive at any process, so the
server talks to its calls through a :class:`ControlPlane`:

* **registry** — :meth:`~ControlPlane.admit` a call at its start event (against the cluster-wide
  cap), :meth:`~ControlPlane.update` its state, :meth:`~ControlPlane.remove` it when it ends;
  :meth:`~ControlPlane.calls` and :meth:`~ControlPlane.count` see the whole cluster.
* **commands** — :meth:`~ControlPlane.send` a :class:`Command` (steer, interrupt, hang up, an
  event webhook) by call id; the process holding the call runs it through the handler given to
  :meth:`~ControlPlane.start` and its :class:`Reply` comes back. At most once: a command is
  delivered to one process or none; the reply is its acknowledgement, so the caller can say 200
  or 404 truthfully, and 504 when the holder did not answer in time (then it may or may not have
  run).
* **events** — :meth:`~ControlPlane.publish_event` a JSON-able event of a call (a transcript
  line, a state change) where the call runs; :meth:`~ControlPlane.subscribe` to one call's events,
  or every call's, from any process (an operator page's live stream)::

      async with server.control.subscribe(call_id="CA…") as events:
          async for event in events:          # CallEvent(carrier, call_id, data)
              ...

  Delivery is best-effort and live only (no history): a subscriber sees what is published
  while it is subscribed.

:class:`LocalControlPlane` (the default, nothing to set up) keeps all of it in the process.
:class:`RedisControlPlane` (``TELEWIRE_CONTROL_URL=redis://host:6379/0``) shares it through
Redis; :func:`control_plane` picks one from the settings. Redis keys (``telewire:`` prefix):

``telewire:calls``                  sorted set, member ``{carrier}:{call_id}``, score its expiry
                                    (ms, Redis' clock); the cluster count and the index to list.
``telewire:call:{carrier}:{call_id}``  the :class:`CallEntry` as JSON, expiring after the TTL.
``telewire:w:{worker_id}``          pub/sub channel of one worker: commands and replies to it.
``telewire:ev:{carrier}:{call_id}``  pub/sub channel of one call's events.

Each worker refreshes its calls' entries every TTL/3 in one round trip; a worker that dies
(``kill -9``) stops refreshing and its calls leave the registry within the TTL. Nothing read back
from Redis is trusted: entries, commands, replies and events are parsed and their ids checked
(:func:`telewire.envelope.id_problem`) before use, and an entry routes a command to a worker id
and nothing else (no file, URL or key is ever built from Redis data but the call-id map's).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import socket
import uuid
from collections import deque
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from loguru import logger

from telewire.envelope import id_problem
from telewire.errors import ConfigError
from telewire.redact import mask_text

if TYPE_CHECKING:
    from telewire.settings import ServerSettings

__all__ = ["ACTIONS", "CallEntry", "CallEvent", "Command", "CommandHandler", "ControlPlane",
           "LocalControlPlane", "RedisControlPlane", "Reply", "Subscription", "control_plane",
           "default_worker_id"]

#: what a :class:`Command` may ask of a call
ACTIONS = frozenset({"steer", "interrupt", "hangup", "transfer", "webhook"})
#: how long each step of closing the Redis plane may take
_CLOSE_WAIT_S = 5.0
#: what a registry entry's ``state`` may be
STATES = frozenset({"live", "draining", "ending"})
_WORKER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CARRIER = re.compile(r"[A-Za-z0-9_-]{1,40}")
_COMMAND_ID = re.compile(r"[0-9a-f]{32}")
#: the largest command, reply or event accepted from Redis (a webhook body is at most 256 KiB)
_MAX_MESSAGE = 512 * 1024
_MAX_EVENT = 64 * 1024


def default_worker_id() -> str:
    """``{hostname}-{pid}-{4 hex}``: unique per process, readable in ``/api/calls``."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def _check_ids(carrier: Any, call_id: Any) -> str | None:
    if not isinstance(carrier, str) or not _CARRIER.fullmatch(carrier):
        return "the carrier is not a plugin name"
    problem = id_problem(call_id)
    return None if problem is None else f"the call id {problem}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEntry:
    """One live call in the registry.

    Attributes:
        carrier: the carrier plugin's name.
        call_id: the carrier's call id (the stream id when the carrier has none).
        stream_id: the media stream's id.
        worker: the id of the process holding the call.
        started: when the call started (Unix time, seconds).
        state: ``live``, ``draining`` (its process is stopping) or ``ending``.
    """

    carrier: str
    call_id: str
    stream_id: str
    worker: str
    started: float
    state: str = "live"

    def __post_init__(self) -> None:
        problem = _check_ids(self.carrier, self.call_id) or (
            None if self.stream_id == "" else id_problem(self.stream_id))
        if problem is not None:
            raise ValueError(f"call entry: {problem}")
        if not isinstance(self.worker, str) or not _WORKER_ID.fullmatch(self.worker):
            raise ValueError("call entry: the worker id is not [A-Za-z0-9._-]{1,64}")
        if (not isinstance(self.started, (int, float)) or isinstance(self.started, bool)
                or not math.isfinite(self.started)):
            raise ValueError("call entry: started is not a time")
        if self.state not in STATES:
            raise ValueError(f"call entry: state is not one of {sorted(STATES)}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.carrier, self.call_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "CallEntry":
        """Parse and check an entry read back from the registry.

        Raises:
            ValueError: it is not a well-formed entry.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("call entry: not a JSON object")
        names = ("carrier", "call_id", "stream_id", "worker", "started", "state")
        return cls(**{k: data.get(k) for k in names})


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Something to do to one live call, wherever it runs.

    Attributes:
        action: ``steer`` (``body``: ``instructions`` and/or ``voice``), ``interrupt``,
            ``hangup`` or ``webhook`` (``body``: the carrier's event webhook request, see
            the server).
        call_id: the call.
        carrier: the call's carrier; ``None`` when the operator did not name it (then the call
            id must be live on exactly one carrier).
        body: the action's JSON object.
    """

    action: str
    call_id: str
    carrier: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"command: unknown action {self.action!r}")
        problem = (id_problem(self.call_id) if self.carrier is None
                   else _check_ids(self.carrier, self.call_id))
        if problem is not None:
            raise ValueError(f"command: {problem}")
        if not isinstance(self.body, Mapping):
            raise ValueError("command: the body is not an object")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A command's outcome, as the HTTP response the API (or webhook) answers with."""

    status: int
    body: str
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: Any) -> "Reply":
        return cls(status=status, body=json.dumps(data))

    @classmethod
    def error(cls, status: int, message: str) -> "Reply":
        return cls.json(status, {"error": message})


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent:
    """An event of one call (:meth:`ControlPlane.publish_event`): ``data`` is a JSON object."""

    carrier: str
    call_id: str
    data: Mapping[str, Any]


#: Runs a command on a call this process holds: the server's ``execute``.
CommandHandler = Callable[[Command], Awaitable[Reply]]


class Subscription:
    """Events of one call (or of every call), from :meth:`ControlPlane.subscribe`.

    An async context manager and an async iterator; at most ``maxsize`` events wait to be read,
    older ones are dropped first (a slow page loses lines, never slows the call).
    """

    def __init__(self, maxsize: int = 256) -> None:
        self._queue: deque[CallEvent] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0
        #: set once events published from now on will be seen (a Redis subscription is made
        #: in the background)
        self.subscribed = asyncio.Event()
        self._on_close: list[Callable[[], Awaitable[None] | None]] = []

    def put(self, event: CallEvent) -> None:
        if self._closed:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> CallEvent:
        """The next event (waits for one); raises ``StopAsyncIteration`` once closed."""
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> CallEvent:
        return await self.get()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        for hook in self._on_close:
            result = hook()
            if result is not None:
                await result


class ControlPlane:
    """The interface the server uses for its calls' registry, commands and events.

    Args:
        worker_id: this process's id (``[A-Za-z0-9._-]{1,64}``).
        ttl_s: how long a registry entry lives without a refresh.
        timeout_s: how long :meth:`send` waits for the holding process's reply.
    """

    #: what ``telewire`` logs and ``/api/calls`` shows as the plane's kind
    kind: str = "abstract"

    def __init__(self, *, worker_id: str | None = None, ttl_s: float = 15.0,
                 timeout_s: float = 3.0) -> None:
        self.worker_id = worker_id or default_worker_id()
        if not _WORKER_ID.fullmatch(self.worker_id):
            raise ConfigError(f"TELEWIRE_WORKER_ID {self.worker_id[:80]!r}: use 1 to 64 letters, "
                              "digits, '.', '_' or '-'")
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._handler: CommandHandler | None = None

    def where(self) -> str:
        """Where the plane lives, fit to log (secrets masked)."""
        return "in-process"

    async def start(self, handler: CommandHandler) -> None:
        """Begin: ``handler`` runs commands for the calls this process holds."""
        self._handler = handler

    async def close(self) -> None:
        """Stop; this process's entries leave the registry."""

    async def admit(self, entry: CallEntry, cap: int = 0) -> bool:
        """Register a starting call; ``False`` (not registered) when ``cap`` calls (``0``: no
        cap) are live in the cluster already. Atomic: two processes cannot both take the last
        place."""
        raise NotImplementedError

    async def update(self, entry: CallEntry) -> None:
        """Replace a registered call's entry (its state changed)."""
        raise NotImplementedError

    async def remove(self, carrier: str, call_id: str) -> None:
        """The call ended: take it out of the registry."""
        raise NotImplementedError

    async def calls(self) -> list[CallEntry]:
        """Every live call in the cluster."""
        raise NotImplementedError

    async def count(self) -> int:
        """How many calls are live in the cluster."""
        raise NotImplementedError

    async def send(self, command: Command) -> Reply:
        """Run ``command`` on its call, wherever it runs; the holder's :class:`Reply`, or a
        404 when no process holds the call, a 409 when the call id is live on several carriers
        (name the carrier), a 504 when its holder did not answer within the timeout."""
        raise NotImplementedError

    async def publish_event(self, carrier: str, call_id: str, data: Mapping[str, Any]) -> None:
        """Publish an event of a call this process holds to every subscriber, in any process.
        ``data`` must be a JSON object (at most 64 KiB encoded); best effort."""
        raise NotImplementedError

    def subscribe(self, carrier: str | None = None, call_id: str | None = None,
                  maxsize: int = 256) -> Subscription:
        """Events of the call ``call_id`` (on ``carrier``, or on any), or of every call when
        ``call_id`` is ``None``. Use it as ``async with``; closing it unsubscribes."""
        raise NotImplementedError

    async def _run_local(self, command: Command) -> Reply:
        if self._handler is None:
            return Reply.error(503, "the control plane has not started")
        return await self._handler(command)


def _event_data(data: Mapping[str, Any]) -> str:
    if not isinstance(data, Mapping):
        raise TypeError("an event is a JSON object (a mapping)")
    text = json.dumps(data, separators=(",", ":"), default=str)
    if len(text) > _MAX_EVENT:
        raise ValueError(f"an event may have at most {_MAX_EVENT} bytes encoded, not {len(text)}")
    return text


class LocalControlPlane(ControlPlane):
    """The control plane of one process: what it holds is the cluster (the default)."""

    kind = "local"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entries: dict[tuple[str, str], CallEntry] = {}
        self._subs: list[tuple[str | None, str | None, Subscription]] = []

    async def admit(self, entry: CallEntry, cap: int = 0) -> bool:
        if cap and entry.key not in self._entries and len(self._entries) >= cap:
            return False
        self._entries[entry.key] = entry
        return True

    async def update(self, entry: CallEntry) -> None:
        if entry.key in self._entries:
            self._entries[entry.key] = entry

    async def remove(self, carrier: str, call_id: str) -> None:
        self._entries.pop((carrier, call_id), None)

    async def calls(self) -> list[CallEntry]:
        return list(self._entries.values())

    async def count(self) -> int:
        return len(self._entries)

    async def send(self, command: Command) -> Reply:
        return await self._run_local(command)

    async def publish_event(self, carrier: str, call_id: str, data: Mapping[str, Any]) -> None:
        text = _event_data(data)
        event = CallEvent(carrier=carrier, call_id=call_id, data=json.loads(text))
        for want_carrier, want_call, sub in list(self._subs):
            if (want_call is None or want_call == call_id) and (
                    want_carrier is None or want_carrier == carrier):
                sub.put(event)

    def subscribe(self, carrier: str | None = None, call_id: str | None = None,
                  maxsize: int = 256) -> Subscription:
        sub = Subscription(maxsize)
        entry = (carrier, call_id, sub)
        self._subs.append(entry)
        sub._on_close.append(lambda: self._subs.remove(entry) if entry in self._subs else None)
        sub.subscribed.set()
        return sub


# -- Redis -----------------------------------------------------------------------------------------

# Redis' own clock stamps every expiry, so hosts whose clocks differ agree on what expired.
_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
#: KEYS: index, entry; ARGV: member, entry JSON, ttl ms, cap -> 1 admitted, 0 at the cap
_ADMIT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[4])
if cap > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1])
   and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
#: KEYS: index, entry…; ARGV: ttl ms, member… -> the members whose entry was gone
_REFRESH = _NOW + """
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 2, #KEYS do
  if redis.call('PEXPIRE', KEYS[i], ttl) == 1 then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    missing[#missing + 1] = ARGV[i]
  end
end
return missing
"""
#: KEYS: index -> live members (expired ones dropped first)
_LIVE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
_COUNT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


class RedisControlPlane(ControlPlane):
    """The control plane shared through Redis by every process and host of a deployment.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS, ``unix://``).
        prefix: the key prefix (``telewire:``); deployments sharing one Redis database use
            different prefixes.

    A Redis error never ends a call: registering, refreshing and removing log it and go on (a
    call admitted while Redis is unreachable is not counted against the cluster cap), and a
    command that cannot be sent answers 503.
    """

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "telewire:", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            import redis.asyncio  # noqa: F401  (fail at start-up, not at the first call)
        except ImportError:
            raise ConfigError("TELEWIRE_CONTROL_URL names Redis, but redis-py is not installed: "
                              "pip install 'telewire[control]'") from None
        self.url = url
        self.prefix = prefix
        self._index = prefix + "calls"
        self._redis: Any = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._mine: dict[tuple[str, str], CallEntry] = {}
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._seen: deque[str] = deque(maxlen=4096)
        self._seen_set: set[str] = set()
        self._subscriptions: set[Subscription] = set()
        self._scripts: dict[str, Any] = {}
        self._running: set[asyncio.Task[None]] = set()

    def where(self) -> str:
        return mask_text(self.url)

    def _entry_key(self, carrier: str, call_id: str) -> str:
        return f"{self.prefix}call:{carrier}:{call_id}"

    def _channel(self, worker: str) -> str:
        return f"{self.prefix}w:{worker}"

    async def start(self, handler: CommandHandler) -> None:
        import redis.asyncio as aioredis

        await super().start(handler)
        self._redis = aioredis.Redis.from_url(self.url, decode_responses=True,
                                              health_check_interval=30)
        try:
            await self._redis.ping()
        except Exception as exc:
            raise ConfigError(f"the control plane at {self.where()} is unreachable: "
                              f"{mask_text(str(exc))}") from None
        for name, source in (("admit", _ADMIT), ("refresh", _REFRESH), ("live", _LIVE),
                             ("count", _COUNT)):
            self._scripts[name] = self._redis.register_script(source)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel(self.worker_id))
        self._tasks = [asyncio.ensure_future(self._listen()),
                       asyncio.ensure_future(self._refresh_loop())]
        logger.info("control plane: Redis at {} (worker {}, entries live {:g} s)", self.where(),
                    self.worker_id, self.ttl_s)

    async def close(self) -> None:
        # every wait is bounded: a Redis that stopped answering (or a redis-py pub/sub reader
        # that does not give up on cancellation) must not hold a server's shutdown forever
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            with suppress(asyncio.CancelledError, Exception):
                await asyncio.wait(self._tasks, timeout=_CLOSE_WAIT_S)
        self._tasks = []
        for sub in list(self._subscriptions):
            with suppress(Exception):
                await asyncio.wait_for(sub.close(), _CLOSE_WAIT_S)
        if self._redis is None:
            return
        for carrier, call_id in list(self._mine):
            with suppress(Exception):
                await asyncio.wait_for(self.remove(carrier, call_id), _CLOSE_WAIT_S)
        for client in (self._pubsub, self._redis):
            with suppress(Exception):
                closer = getattr(client, "aclose", None) or client.close  # aclose: redis >= 5.0.1
                await asyncio.wait_for(closer(), _CLOSE_WAIT_S)
        self._redis = self._pubsub = None

    # -- registry

    async def admit(self, entry: CallEntry, cap: int = 0) -> bool:
        self._mine[entry.key] = entry
        try:
            ok = await self._scripts["admit"](
                keys=[self._index, self._entry_key(*entry.key)],
                args=[f"{entry.carrier}:{entry.call_id}", entry.to_json(),
                      int(self.ttl_s * 1000), cap])
        except Exception as exc:
            logger.error("control plane: cannot register call {}: {}", entry.call_id,
                         mask_text(str(exc)))
            return True
        if not int(ok):
            self._mine.pop(entry.key, None)
            return False
        return True

    async def update(self, entry: CallEntry) -> None:
        if entry.key not in self._mine:
            return
        self._mine[entry.key] = entry
        try:
            await self._redis.set(self._entry_key(*entry.key), entry.to_json(),
                                  px=int(self.ttl_s * 1000), xx=True)
        except Exception as exc:
            logger.warning("control plane: cannot update call {}: {}", entry.call_id,
                           mask_text(str(exc)))

    async def remove(self, carrier: str, call_id: str) -> None:
        if self._mine.pop((carrier, call_id), None) is None or self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._index, f"{carrier}:{call_id}")
                pipe.delete(self._entry_key(carrier, call_id))
                await pipe.execute()
        except Exception as exc:
            logger.warning("control plane: cannot remove call {} (it expires within {:g} s): {}",
                           call_id, self.ttl_s, mask_text(str(exc)))

    async def _refresh_loop(self) -> None:
        period = max(self.ttl_s / 3, 0.05)
        while True:
            await asyncio.sleep(period)
            mine = dict(self._mine)
            if not mine:
                continue
            try:
                missing = await self._scripts["refresh"](
                    keys=[self._index, *(self._entry_key(*k) for k in mine)],
                    args=[int(self.ttl_s * 1000), *(f"{c}:{i}" for c, i in mine)])
                for member in missing or ():
                    carrier, _, call_id = str(member).partition(":")
                    entry = self._mine.get((carrier, call_id))
                    if entry is not None:  # Redis lost it (restart, a long pause): put it back
                        logger.warning("control plane: call {} was missing from the registry; "
                                       "registering it again", call_id)
                        await self._scripts["admit"](
                            keys=[self._index, self._entry_key(carrier, call_id)],
                            args=[member, entry.to_json(), int(self.ttl_s * 1000), 0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("control plane: refreshing {} call(s) failed: {}", len(mine),
                               mask_text(str(exc)))

    async def calls(self) -> list[CallEntry]:
        members = await self._scripts["live"](keys=[self._index])
        pairs = []
        for member in members:
            carrier, _, call_id = str(member).partition(":")
            if _check_ids(carrier, call_id) is None:
                pairs.append((carrier, call_id))
        if not pairs:
            return []
        texts = await self._redis.mget([self._entry_key(c, i) for c, i in pairs])
        out = []
        for (carrier, call_id), text in zip(pairs, texts):
            if text is None:
                continue
            try:
                entry = CallEntry.from_json(text)
            except (ValueError, TypeError) as exc:
                logger.warning("control plane: ignoring a bad registry entry for {}: {}",
                               call_id, exc)
                continue
            if entry.key == (carrier, call_id):
                out.append(entry)
        return out

    async def count(self) -> int:
        return int(await self._scripts["count"](keys=[self._index]))

    # -- commands

    async def _holder(self, command: Command) -> CallEntry | Reply:
        if command.carrier is not None:
            text = await self._redis.get(self._entry_key(command.carrier, command.call_id))
            found = []
            if text is not None:
                try:
                    found = [CallEntry.from_json(text)]
                except (ValueError, TypeError):
                    found = []
        else:
            found = [e for e in await self.calls() if e.call_id == command.call_id]
        found = [e for e in found if e.call_id == command.call_id and (
            command.carrier is None or e.carrier == command.carrier)]
        where = f" on {command.carrier!r}" if command.carrier else ""
        if not found:
            return Reply.error(404, f"no live call {command.call_id[:80]!r}{where}")
        if len(found) > 1:
            names = sorted(e.carrier for e in found)
            return Reply.error(409, f"call id {command.call_id[:80]!r} is live on {names}; name "
                                    "the carrier: /api/calls/{carrier}/{call_id}/…")
        return found[0]

    async def send(self, command: Command) -> Reply:
        if self._redis is None:
            return await self._run_local(command)
        try:
            holder = await self._holder(command)
        except Exception as exc:
            logger.error("control plane: cannot look up call {}: {}", command.call_id,
                         mask_text(str(exc)))
            return Reply.error(503, "the control plane is unreachable")
        if isinstance(holder, Reply):
            return holder
        command = Command(action=command.action, call_id=holder.call_id, carrier=holder.carrier,
                          body=command.body)
        if holder.worker == self.worker_id:
            return await self._run_local(command)
        ident = uuid.uuid4().hex
        message = json.dumps({"kind": "command", "id": ident, "from": self.worker_id,
                              "action": command.action, "carrier": command.carrier,
                              "call_id": command.call_id, "body": dict(command.body)},
                             separators=(",", ":"))
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            receivers = await self._redis.publish(self._channel(holder.worker), message)
            if not receivers:  # its worker is gone: the entry is on its way out
                return Reply.error(404, f"no live call {command.call_id[:80]!r} (the worker "
                                        f"holding it, {holder.worker}, is gone)")
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            return Reply.error(504, f"worker {holder.worker} holding call "
                                    f"{command.call_id[:80]!r} did not answer within "
                                    f"{self.timeout_s:g} s; the command may or may not have run")
        except Exception as exc:
            logger.error("control plane: cannot send a command: {}", mask_text(str(exc)))
            return Reply.error(503, "the control plane is unreachable")
        finally:
            self._waiting.pop(ident, None)

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message.get("data")
                    if isinstance(data, str) and len(data) <= _MAX_MESSAGE:
                        # its own task: a slow command does not hold up the replies behind it
                        task = asyncio.ensure_future(self._received(data))
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("control plane: command channel failed ({}); resubscribing",
                               mask_text(str(exc)))
                await asyncio.sleep(1.0)
                with suppress(Exception):
                    await self._pubsub.subscribe(self._channel(self.worker_id))

    async def _received(self, text: str) -> None:
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict) or not _COMMAND_ID.fullmatch(str(msg.get("id", ""))):
                raise ValueError("no command id")
        except ValueError as exc:
            logger.warning("control plane: ignoring a malformed message: {}", exc)
            return
        ident = msg["id"]
        if msg.get("kind") == "reply":
            future = self._waiting.get(ident)
            status, body, ctype = msg.get("status"), msg.get("body"), msg.get("content_type")
            if (future is not None and not future.done() and isinstance(status, int)
                    and 100 <= status <= 599 and isinstance(body, str)
                    and isinstance(ctype, str) and len(ctype) <= 100):
                future.set_result(Reply(status=status, body=body, content_type=ctype))
            return
        if msg.get("kind") != "command" or ident in self._seen_set:
            return  # at most once: a command id runs once here
        self._seen_set.add(ident)
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(ident)
        sender = msg.get("from")
        if not isinstance(sender, str) or not _WORKER_ID.fullmatch(sender):
            logger.warning("control plane: ignoring a command with no valid sender")
            return
        try:
            command = Command(action=str(msg.get("action")), call_id=msg.get("call_id"),
                              carrier=msg.get("carrier"), body=msg.get("body") or {})
            reply = await self._run_local(command)
        except (ValueError, TypeError) as exc:
            reply = Reply.error(400, str(exc))
        except Exception as exc:  # a bug running it: answer, so the API does not wait
            logger.exception("control plane: command failed")
            reply = Reply.error(500, f"{type(exc).__name__}")
        answer = json.dumps({"kind": "reply", "id": ident, "status": reply.status,
                             "body": reply.body, "content_type": reply.content_type})
        try:
            await self._redis.publish(self._channel(sender), answer)
        except Exception as exc:
            logger.warning("control plane: cannot reply to {}: {}", sender, mask_text(str(exc)))

    # -- events

    async def publish_event(self, carrier: str, call_id: str, data: Mapping[str, Any]) -> None:
        text = _event_data(data)
        if self._redis is None:
            return
        try:
            await self._redis.publish(f"{self.prefix}ev:{carrier}:{call_id}", text)
        except Exception as exc:
            logger.debug("control plane: event of {} not published: {}", call_id, exc)

    def subscribe(self, carrier: str | None = None, call_id: str | None = None,
                  maxsize: int = 256) -> Subscription:
        sub = Subscription(maxsize)
        pattern = f"{self.prefix}ev:{carrier or '*'}:{call_id or '*'}"
        if carrier is None and call_id is not None and not id_problem(call_id):
            pattern = f"{self.prefix}ev:*:{call_id}"
        head = len(self.prefix) + 3
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)

        async def pump() -> None:
            await pubsub.psubscribe(pattern)
            sub.subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") != "pmessage":
                    continue
                channel, data = str(message.get("channel", "")), message.get("data")
                ev_carrier, _, ev_call = channel[head:].partition(":")
                if (_check_ids(ev_carrier, ev_call) is not None or not isinstance(data, str)
                        or len(data) > _MAX_EVENT or (call_id is not None and ev_call != call_id)):
                    continue
                try:
                    parsed = json.loads(data)
                except ValueError:
                    continue
                if isinstance(parsed, dict):
                    sub.put(CallEvent(carrier=ev_carrier, call_id=ev_call, data=parsed))

        task = asyncio.ensure_future(pump())
        self._subscriptions.add(sub)

        async def stop() -> None:
            self._subscriptions.discard(sub)
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
            with suppress(Exception):
                closer = getattr(pubsub, "aclose", None) or pubsub.close
                await closer()

        sub._on_close.append(stop)
        return sub


def control_plane(settings: "ServerSettings") -> ControlPlane:
    """The control plane the settings name: Redis for ``TELEWIRE_CONTROL_URL=redis://…``
    (``rediss://``, ``unix://``), else the in-process one.

    Raises:
        ConfigError: the URL's scheme is not one the control plane speaks.
    """
    common: dict[str, Any] = {"worker_id": settings.worker_id, "ttl_s": settings.control_ttl_s,
                              "timeout_s": settings.control_timeout_s}
    url = settings.control_url
    if not url:
        return LocalControlPlane(**common)
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisControlPlane(url, **common)
    raise ConfigError(f"TELEWIRE_CONTROL_URL {mask_text(url)!r}: the control plane speaks "
                      "redis://, rediss:// and unix:// URLs")
