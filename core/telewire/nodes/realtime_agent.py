"""The ``realtime_agent`` node (``rt``): connects the call to a realtime speech-to-speech model.

Depends on ``telewire.nodes.base``, ``telewire.realtime``, ``telewire.cost`` and
``telewire.frames``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any, ClassVar

from loguru import logger
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from telewire.cost import CallCost, ModelPrice, PriceTable, Usage, default_prices
from telewire.errors import ConfigError, ProviderError
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptFrame,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
)
from telewire.nodes.base import Node
from telewire.realtime.base import (
    ProviderCapabilities,
    ProviderConfig,
    RealtimeSession,
    create_session,
    provider_class,
)
from telewire.tools import ToolBox

__all__ = ["RealtimeAgent"]

#: what the model is told to say when a call reaches its budget
DEFAULT_BUDGET_GOODBYE = ("Tell the caller, in one short sentence, that this call has reached its "
                          "limit and has to end now, and say goodbye.")
#: what the model is told to say when the server drains (SIGTERM) and the call must end
DEFAULT_DRAIN_GOODBYE = ("Tell the caller, in one short sentence, that you have to end this call "
                         "now, and say goodbye.")


class RealtimeAgentConfig(ProviderConfig):
    """``[nodes.rt.config]``: the provider settings plus how the node buffers.

    Attributes:
        max_pending_ms: caller audio kept while the model connection opens; older audio is
            dropped (and counted) beyond this.
        max_call_seconds: the call's time budget from its start; unset: none. The server-wide
            ``TELEWIRE_MAX_CALL_S`` stays the hard limit above it.
        max_cost_usd: the call's model-cost budget in USD, checked after each response's usage;
            unset: none. Needs the model's price (a warning says when it cannot be enforced).
        budget_goodbye: on reaching a budget, the instruction the model is given to say goodbye
            (sent as a ``response.create`` with these instructions); ``""`` hangs up at once.
        budget_goodbye_timeout_s: how long the goodbye may take before hanging up anyway.
        drain_goodbye: when the server drains (SIGTERM) and the call is still live after
            ``TELEWIRE_DRAIN_TIMEOUT_S``, the instruction the model is given to say goodbye
            before the call hangs up (bounded by ``TELEWIRE_DRAIN_GOODBYE_S``); ``""`` hangs up
            without one.
        prices: price overrides by model for this node's provider, each a table of rates
            (``audio_input``, ``audio_cached_input``, ``text_output`` …, USD per 1M tokens, or
            ``per_minute``), replacing the shipped entry (``telewire/data/prices.toml``).
        prices_file: a TOML file shaped like the shipped one, merged over it model by model.
        require: provider capabilities this graph relies on (``truncate``, ``tools``,
            ``voice_change`` …: names of :class:`~telewire.realtime.base.ProviderCapabilities`
            fields, or ``turn_based`` / ``full_duplex``); loading the graph fails when the
            provider does not declare them. Tools, built-in tools and transfer targets in this
            config are asks for ``tools`` by themselves.
    """

    model_config = ConfigDict(extra="forbid")
    max_pending_ms: int = Field(default=10_000, gt=0)
    max_call_seconds: float | None = Field(default=None, gt=0)
    max_cost_usd: Decimal | None = Field(default=None, gt=0)
    budget_goodbye: str = DEFAULT_BUDGET_GOODBYE
    budget_goodbye_timeout_s: float = Field(default=15.0, gt=0)
    drain_goodbye: str = DEFAULT_DRAIN_GOODBYE
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prices_file: str | None = None
    require: list[str] = Field(default_factory=list)
    _price_table: PriceTable = PrivateAttr(default_factory=default_prices)

    @model_validator(mode="after")
    def _provider_can(self) -> "RealtimeAgentConfig":
        caps = provider_class(self.provider).capabilities
        asks = [(name, "rt.config.require") for name in self.require]
        if self.tools:
            asks.append(("tools", "rt.config.tools"))
        if "builtin_tools" in self.model_fields_set and self.builtin_tools:
            asks.append(("tools", "rt.config.builtin_tools"))
        if self.transfer_targets:
            asks.append(("tools", "rt.config.transfer_targets"))
        for name, where in asks:
            problem = capability_missing(caps, name)
            if problem is not None:
                raise ValueError(f"provider {self.provider!r} {problem} (asked for by {where})")
        return self

    @model_validator(mode="after")
    def _load_prices(self) -> "RealtimeAgentConfig":
        table = default_prices()
        try:
            if self.prices_file:
                table = table.merged(PriceTable.load(self.prices_file))
            if self.prices:
                table = table.with_models(self.provider, {
                    m: ModelPrice.parse(m, r, where="rt.config.prices")
                    for m, r in self.prices.items()})
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self._price_table = table
        if self.max_cost_usd is not None and table.lookup(self.provider, self.model) is None:
            logger.warning("rt.config.max_cost_usd is set but {} model {!r} has no price, so the "
                           "cost budget cannot be enforced; set rt.config.prices",
                           self.provider, self.model)
        return self

    @property
    def price_table(self) -> PriceTable:
        """The shipped prices with this node's ``prices_file`` and ``prices`` over them."""
        return self._price_table


def capability_missing(caps: ProviderCapabilities, name: str) -> str | None:
    """Why ``caps`` lacks capability ``name`` (``None`` when it has it).

    Raises:
        ValueError: ``name`` is no capability.
    """
    if name in ("turn_based", "full_duplex"):
        return None if caps.turn_model == name else (
            f"is {caps.turn_model.replace('_', '-')}, not {name.replace('_', '-')}")
    if name in ("audio_formats", "billing", "session_max_s", "key_env", "turn_model") or \
            name not in ProviderCapabilities.__dataclass_fields__:
        known = sorted(n for n in ProviderCapabilities.__dataclass_fields__
                       if n not in ("audio_formats", "billing", "session_max_s", "key_env",
                                    "turn_model")) + ["full_duplex", "turn_based"]
        raise ValueError(f"unknown provider capability {name!r}; known: {', '.join(known)}")
    value = getattr(caps, name)
    if value and value != "never":
        return None
    return f"does not have capability {name!r}"


class RealtimeAgent(Node):
    """Feeds caller audio to the model and emits what the model says."""

    inputs: ClassVar = {
        "audio_in": (AudioFrame,),
        "dtmf_in": (DTMFFrame,),
        "interrupt_in": (InterruptFrame,),
        "steer_in": (SteerFrame,),
    }
    outputs: ClassVar = {
        "audio_out": (AudioFrame,),
        "transcript": (TranscriptFrame,),
        "usage": (UsageFrame,),
        "interrupt": (InterruptFrame,),
        "errors": (ErrorFrame,),
    }
    Config: ClassVar = RealtimeAgentConfig

    def __init__(self, name: str, config: RealtimeAgentConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        self.session: RealtimeSession | None = None
        self._ready = False
        self._ended = False
        self._pending: list[AudioFrame] = []
        self._pending_ms = 0.0
        self.dropped_frames = 0
        self._connect: asyncio.Task[None] | None = None
        #: the call's running model cost (:class:`telewire.cost.CallCost`): ``cost.usd``
        self.cost = CallCost.for_model(config.provider, config.model, config.price_table)
        #: the budget reached (``"max_call_seconds"`` / ``"max_cost_usd"``), once one is
        self.budget_reached: str | None = None
        #: saying a goodbye (a budget's or the server's drain): the model hears no more
        self._closing = False
        self._budget_timer: asyncio.TimerHandle | None = None
        self._budget_task: asyncio.Task[None] | None = None
        self._routes = {
            AudioFrame: "audio_out",
            TranscriptFrame: "transcript",
            UsageFrame: "usage",
            InterruptFrame: "interrupt",
            ErrorFrame: "errors",
        }

    @classmethod
    def carrier_problem(cls, config: RealtimeAgentConfig, capabilities: Any) -> str | None:
        return _format_problem(config.provider, capabilities.media_format)

    async def on_call_start(self, frame: StartFrame) -> None:
        problem = _format_problem(self.config.provider, frame.media_format)
        if problem is not None:
            self.call.log.error("{}: {}", self.name, problem)
            await self.call.end("config_error", f"node {self.name!r}: {problem}")
            return
        try:
            tools = None
            if provider_class(self.config.provider).capabilities.tools:
                tools = ToolBox(self.config.tools, self.config.builtin_tools, self.call,
                                transfer_targets=self.config.transfer_targets)
            self.session = create_session(self.config, self._from_model, log=self.call.log,
                                          tools=tools)
        except ConfigError as exc:
            self.call.log.error("{}", exc)
            await self.call.end("config_error", str(exc))
            return
        self._connect = asyncio.create_task(self._open(frame), name=f"{self.name}-connect")
        limit = self.config.max_call_seconds
        if limit is not None:
            self._budget_timer = asyncio.get_running_loop().call_later(
                limit, self._over_budget, "max_call_seconds",
                f"the call reached max_call_seconds ({limit:g} s)")

    async def _open(self, frame: StartFrame) -> None:
        assert self.session is not None
        try:
            await self.session.start(frame)
        except (ProviderError, ConfigError, OSError, asyncio.TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            self.call.log.error("realtime provider {!r} failed to start: {}",
                                self.config.provider, detail)
            await self.call.end("provider_error", detail)
            return
        self._ready = True
        pending, self._pending = self._pending, []
        for f in pending:
            await self.session.send_audio(f)

    async def _from_model(self, frame: Frame) -> None:
        """The session's sink: route model output to our ports (agent audio first: it is most
        of what the model sends)."""
        if type(frame) is AudioFrame:
            await self._out["audio_out"](frame)
            return
        if type(frame) is UsageFrame:
            frame = self._priced(frame)
        port = self._routes.get(type(frame))
        if port is not None:
            if port == "errors":
                self.call.report(frame)  # type: ignore[arg-type]
            await self.emit(port, frame)
        elif isinstance(frame, EndFrame):
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.call.end(frame.reason, frame.detail)))

    # -- cost and budgets ----------------------------------------------------------------------------

    def _priced(self, frame: UsageFrame) -> UsageFrame:
        """Add a response's usage to :attr:`cost`; the frame goes on with its cost and the
        call's so far. Reaching ``max_cost_usd`` starts the goodbye."""
        try:
            usage = Usage.from_frame(frame)
        except ValueError as exc:
            self.call.log.warning("{}: usage not counted: {}", self.name, exc)
            return frame
        known = self.cost.known
        cost = self.cost.add(usage)
        cap, total = self.config.max_cost_usd, self.cost.usd
        if cap is not None and total is None and known:
            self.call.log.warning("{}: the call's cost is unknown from now on (see the warning "
                                  "above), so max_cost_usd cannot be enforced", self.name)
        if cap is not None and total is not None and total >= cap:
            self._over_budget("max_cost_usd",
                              f"the call's model cost reached max_cost_usd (${cap}): ${total}")
        return dataclasses.replace(frame, cost_usd=None if cost is None else float(cost),
                                   call_cost_usd=self.cost.usd_float)

    def _over_budget(self, cap: str, detail: str) -> None:
        """A budget is reached: stop feeding the model, have it say goodbye, hang up (once)."""
        self._budget_timer = None
        if self.budget_reached is not None or self._ended:
            return
        self.budget_reached = cap
        self._closing = True
        self.call.log.warning("{}: {}; ending the call", self.name, detail)
        self._budget_task = asyncio.ensure_future(self._say_goodbye(detail))

    async def _say_goodbye(self, detail: str) -> None:
        await self._goodbye(self.config.budget_goodbye, "budget_goodbye")
        await self.call.hang_up("budget", detail)

    async def _goodbye(self, text: str, tag: str) -> bool:
        """Have the model say ``text`` (an instruction) with nothing else going on; ``True``
        once it has been said, ``False`` when there is nothing to say or it did not finish in
        ``budget_goodbye_timeout_s``."""
        text = text.strip()
        if not (text and self._ready and self.session is not None):
            return False
        try:
            said = await asyncio.wait_for(self.session.say(text, tag=tag),
                                          self.config.budget_goodbye_timeout_s)
        except TimeoutError:
            said = False
            self.call.log.warning("{}: the {} did not finish within {:g} s; hanging up",
                                  self.name, tag.replace("_", " "),
                                  self.config.budget_goodbye_timeout_s)
        if not said:
            self.call.log.info("{}: the {} was not completed", self.name, tag.replace("_", " "))
        return bool(said)

    async def say_goodbye(self, reason: str, detail: str) -> None:
        """The server drains: stop feeding the model and have it say ``drain_goodbye``."""
        if self._ended or self._closing:
            return  # a budget goodbye is already under way
        self._closing = True  # the model hears no more caller audio from now on
        await self._goodbye(self.config.drain_goodbye, "drain_goodbye")

    async def on_audio_in(self, frame: AudioFrame) -> None:  # type: ignore[override]
        if self._closing:
            return  # saying goodbye: the model hears no more (and bills no more caller audio)
        if self._ready:
            await self.session.send_audio(frame)  # type: ignore[union-attr]
            return
        if self.session is None:
            return
        self._pending.append(frame)
        self._pending_ms += frame.duration_ms
        while self._pending_ms > self.config.max_pending_ms and self._pending:
            old = self._pending.pop(0)
            self._pending_ms -= old.duration_ms
            self.dropped_frames += 1

    async def on_dtmf_in(self, frame: DTMFFrame) -> None:  # type: ignore[override]
        if self._ready and not self._closing:
            await self.session.send_dtmf(frame)  # type: ignore[union-attr]

    async def on_interrupt_in(self, frame: InterruptFrame) -> None:  # type: ignore[override]
        if self._ready and not self._closing:
            await self.session.interrupt(frame)  # type: ignore[union-attr]

    async def on_steer_in(self, frame: SteerFrame) -> None:  # type: ignore[override]
        if self._ready and not self._closing:
            await self.session.steer(frame)  # type: ignore[union-attr]

    async def on_call_end(self, frame: EndFrame) -> None:
        self._ended = True
        if self._budget_timer is not None:
            self._budget_timer.cancel()
            self._budget_timer = None
        task = self._budget_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
            try:
                await self._connect
            except (asyncio.CancelledError, Exception):
                pass
        if self.session is not None:
            await self.session.close()
        self._ready = False
        counts = {k: v for k, v in self.counters().items()
                  if ":" not in k and k not in ("model_reconnects", "cost_usd")}
        if any(counts.values()):
            self.call.log.info("{}: {}", self.name,
                               ", ".join(f"{k} {v}" for k, v in counts.items() if v))

    def counters(self) -> dict[str, int]:
        """Caller frames dropped while the model connection opened, plus the session's own
        counters (reconnects, handovers, bad audio deltas, history items dropped …)."""
        counts = {"caller_frames_dropped": self.dropped_frames}
        if self.session is not None:
            counts.update(self.session.counters())
        # the metrics' names for the same counts (telewire.metrics)
        counts["dropped_frames:model_not_ready"] = self.dropped_frames
        counts["dropped_frames:bad_model_audio"] = counts.get("bad_audio_deltas", 0)
        counts["model_reconnects"] = counts.get("reconnects", 0) + counts.get("handovers", 0)
        if self.cost.usd is not None:
            counts["cost_usd"] = float(self.cost.usd)
        return counts

    def samples(self) -> dict[str, list[float]]:
        return self.session.samples() if self.session is not None else {}


def _format_problem(provider: str, fmt: Any) -> str | None:
    """Why ``provider`` cannot take audio of media format ``fmt`` unchanged (or ``None``)."""
    caps = provider_class(provider).capabilities
    if caps.supports(fmt.codec, fmt.sample_rate):
        return None
    offered = ", ".join(sorted(f"{c}/{r}" for c, r in caps.audio_formats))
    return (f"provider {provider!r} takes {offered} unchanged (capability 'audio_formats'), "
            f"not the carrier's {fmt.codec}/{fmt.sample_rate}; telewire does not transcode")
