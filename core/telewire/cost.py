"""What a call costs: the provider's usage times a price table, in exact USD, per call.

Depends on ``telewire.frames`` and ``telewire.errors`` only (the standard library and loguru
besides); the ``realtime_agent`` node, the recorder and tracing depend on it.

Three parts, all sans-I/O:

* :class:`Usage`: what one model response (or one stretch of a duration-billed session) used, in
  the provider's billing unit: ``kind="tokens"`` (text/audio/image input, the cached part of each,
  and output) or ``kind="seconds"``. Cached input tokens are a *subset* of input tokens: they are
  priced at the cached rate and only the rest at the full rate, never both.
* :class:`PriceTable` / :class:`ModelPrice`: list prices (USD per 1M tokens, or per minute) with
  their source and the day they were read, from ``telewire/data/prices.toml`` with per-graph
  overrides. A model that is not in the table, or usage that needs a rate the table lacks, has an
  unknown cost (``None``) and a warning is logged once; no figure is ever made up.
* :class:`CallCost`: the running figure of one call (``.usd``, ``.add(usage)``), kept by the
  ``realtime_agent`` node as its ``cost`` attribute; :func:`call_cost` finds it on a call.

All money is :class:`decimal.Decimal`, so a cost is exact; :attr:`CallCost.usd_float` and
:attr:`CallCost.micro_usd` are for metrics and span attributes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

from loguru import logger

from telewire.errors import ConfigError
from telewire.frames import UsageFrame

__all__ = ["CallCost", "ModelPrice", "PriceTable", "RATES", "Usage", "call_cost", "default_prices",
           "total_usd"]

_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")

#: the rates a price entry may give: USD per 1M tokens, and ``per_minute`` (USD per minute)
RATES = ("text_input", "text_cached_input", "text_output",
         "audio_input", "audio_cached_input", "audio_output",
         "image_input", "image_cached_input", "per_minute")


# -- usage -----------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    """A token count from provider JSON: a non-negative int, anything else 0."""
    return value if type(value) is int and value > 0 else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What a provider billed for, in its unit.

    ``kind="tokens"``: the token fields are priced, ``seconds`` is informational. ``kind=
    "seconds"``: ``seconds`` is priced at the model's ``per_minute`` rate, tokens are
    informational. ``cached_*`` tokens are the cached part of the matching ``input_*`` tokens
    (a subset, never in addition).

    Raises:
        ValueError: a negative count, or more cached tokens than input tokens of a modality.
    """

    kind: Literal["tokens", "seconds"] = "tokens"
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    cached_image_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    seconds: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.kind not in ("tokens", "seconds"):
            raise ValueError(f"Usage.kind must be 'tokens' or 'seconds', not {self.kind!r}")
        if not isinstance(self.seconds, Decimal):
            object.__setattr__(self, "seconds", Decimal(str(self.seconds)))
        if self.seconds < 0 or not self.seconds.is_finite():
            raise ValueError(f"Usage.seconds must be finite and >= 0, not {self.seconds}")
        for f in fields(self):
            if f.name.endswith("_tokens") and getattr(self, f.name) < 0:
                raise ValueError(f"Usage.{f.name} must be >= 0")
        for modality in ("text", "audio", "image"):
            if getattr(self, f"cached_{modality}_tokens") > getattr(self, f"input_{modality}_tokens"):
                raise ValueError(f"Usage: more cached {modality} tokens than {modality} input "
                                 "tokens (cached tokens are a subset of input tokens)")

    @classmethod
    def from_realtime(cls, usage: Mapping[str, Any]) -> "Usage":
        """Parse the OpenAI Realtime GA ``response.done`` → ``response.usage`` object.

        ``input_token_details.cached_tokens_details`` splits the cached tokens by modality.
        Where a provider gives only the total ``cached_tokens`` (or a split that does not add up
        to it), the rest is attributed to text first (the cached prefix of a conversation starts
        with the instructions and tools), then audio, then image. A modality's cached count is
        clamped to its input count.
        """
        details_in = usage.get("input_token_details") or {}
        details_out = usage.get("output_token_details") or {}
        split = details_in.get("cached_tokens_details")
        if not isinstance(split, Mapping):
            split = {}
        return cls._attributed(
            text=_count(details_in.get("text_tokens")),
            audio=_count(details_in.get("audio_tokens")),
            image=_count(details_in.get("image_tokens")),
            cached=_count(details_in.get("cached_tokens")),
            c_text=_count(split.get("text_tokens")), c_audio=_count(split.get("audio_tokens")),
            c_image=_count(split.get("image_tokens")),
            out_text=_count(details_out.get("text_tokens")),
            out_audio=_count(details_out.get("audio_tokens")))

    @classmethod
    def _attributed(cls, *, text: int, audio: int, image: int, cached: int, c_text: int,
                    c_audio: int, c_image: int, out_text: int, out_audio: int,
                    kind: Literal["tokens", "seconds"] = "tokens",
                    seconds: Decimal = Decimal(0)) -> "Usage":
        # each modality's cached part is clamped to its input; cached tokens the split does not
        # account for go to text first, then audio, then image
        c_text, c_audio, c_image = min(c_text, text), min(c_audio, audio), min(c_image, image)
        left = cached - c_text - c_audio - c_image
        for name in ("text", "audio", "image"):
            if left <= 0:
                break
            room = {"text": text - c_text, "audio": audio - c_audio, "image": image - c_image}[name]
            extra = min(left, room)
            left -= extra
            if name == "text":
                c_text += extra
            elif name == "audio":
                c_audio += extra
            else:
                c_image += extra
        return cls(kind=kind, input_text_tokens=text, input_audio_tokens=audio,
                   input_image_tokens=image, cached_text_tokens=c_text,
                   cached_audio_tokens=c_audio, cached_image_tokens=c_image,
                   output_text_tokens=out_text, output_audio_tokens=out_audio, seconds=seconds)

    @classmethod
    def from_frame(cls, frame: UsageFrame) -> "Usage":
        """The usage a :class:`~telewire.frames.UsageFrame` carries."""
        return cls._attributed(
            kind=frame.billing, text=frame.input_text_tokens, audio=frame.input_audio_tokens,
            image=frame.input_image_tokens, cached=frame.input_cached_tokens,
            c_text=frame.input_cached_text_tokens, c_audio=frame.input_cached_audio_tokens,
            c_image=frame.input_cached_image_tokens, out_text=frame.output_text_tokens,
            out_audio=frame.output_audio_tokens, seconds=Decimal(str(frame.seconds)))

    def frame_fields(self) -> dict[str, Any]:
        """Keyword arguments for a :class:`~telewire.frames.UsageFrame` carrying this usage."""
        return {"billing": self.kind, "input_text_tokens": self.input_text_tokens,
                "input_audio_tokens": self.input_audio_tokens,
                "input_image_tokens": self.input_image_tokens,
                "input_cached_tokens": self.cached_tokens,
                "input_cached_text_tokens": self.cached_text_tokens,
                "input_cached_audio_tokens": self.cached_audio_tokens,
                "input_cached_image_tokens": self.cached_image_tokens,
                "output_text_tokens": self.output_text_tokens,
                "output_audio_tokens": self.output_audio_tokens,
                "seconds": float(self.seconds)}

    @property
    def cached_tokens(self) -> int:
        return self.cached_text_tokens + self.cached_audio_tokens + self.cached_image_tokens

    @property
    def input_tokens(self) -> int:
        return self.input_text_tokens + self.input_audio_tokens + self.input_image_tokens

    @property
    def output_tokens(self) -> int:
        return self.output_text_tokens + self.output_audio_tokens

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if f.name.endswith("_tokens")}
        out["seconds"] = float(self.seconds)
        return out


# -- prices ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's list prices: USD per 1M tokens by modality, and/or USD ``per_minute``.
    ``None`` is "not published / not known", never zero."""

    model: str
    source: str = ""
    read_on: str = ""
    text_input: Decimal | None = None
    text_cached_input: Decimal | None = None
    text_output: Decimal | None = None
    audio_input: Decimal | None = None
    audio_cached_input: Decimal | None = None
    audio_output: Decimal | None = None
    image_input: Decimal | None = None
    image_cached_input: Decimal | None = None
    per_minute: Decimal | None = None

    @classmethod
    def parse(cls, model: str, raw: Mapping[str, Any], *, where: str) -> "ModelPrice":
        """Build from a table of rates (numbers or numeric strings).

        Raises:
            ConfigError: an unknown key, or a rate that is not a non-negative number.
        """
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: the price of {model!r} must be a table of rates")
        unknown = set(raw) - set(RATES) - {"source", "read_on"}
        if unknown:
            raise ConfigError(f"{where}: unknown price key(s) {', '.join(sorted(unknown))} for "
                              f"{model!r}; known: {', '.join(RATES)}, source, read_on")
        rates: dict[str, Decimal] = {}
        for key in RATES:
            if key not in raw:
                continue
            value = raw[key]
            try:
                if isinstance(value, bool):
                    raise ValueError
                rate = value if isinstance(value, Decimal) else Decimal(str(value))
                if not rate.is_finite() or rate < 0:
                    raise ValueError
            except (ValueError, ArithmeticError):
                raise ConfigError(f"{where}: {model!r} {key} must be a number >= 0 (USD), not "
                                  f"{value!r}") from None
            rates[key] = rate
        return cls(model, str(raw.get("source", "")), str(raw.get("read_on", "")), **rates)

    def cost(self, usage: Usage) -> Decimal | None:
        """USD for ``usage``, exact; ``None`` when it needs a rate this entry does not give."""
        if usage.kind == "seconds":
            if self.per_minute is None:
                return Decimal(0) if usage.seconds == 0 else None
            return usage.seconds * self.per_minute / _SIXTY
        total = Decimal(0)
        for tokens, rate in (
                (usage.input_text_tokens - usage.cached_text_tokens, self.text_input),
                (usage.cached_text_tokens, self.text_cached_input),
                (usage.input_audio_tokens - usage.cached_audio_tokens, self.audio_input),
                (usage.cached_audio_tokens, self.audio_cached_input),
                (usage.input_image_tokens - usage.cached_image_tokens, self.image_input),
                (usage.cached_image_tokens, self.image_cached_input),
                (usage.output_text_tokens, self.text_output),
                (usage.output_audio_tokens, self.audio_output)):
            if tokens:
                if rate is None:
                    return None
                total += tokens * rate
        return total / _MILLION

    def missing_for(self, usage: Usage) -> list[str]:
        """The rates ``usage`` needs that this entry lacks (for the warning)."""
        if usage.kind == "seconds":
            return ["per_minute"] if usage.seconds and self.per_minute is None else []
        need = {"text_input": usage.input_text_tokens - usage.cached_text_tokens,
                "text_cached_input": usage.cached_text_tokens,
                "audio_input": usage.input_audio_tokens - usage.cached_audio_tokens,
                "audio_cached_input": usage.cached_audio_tokens,
                "image_input": usage.input_image_tokens - usage.cached_image_tokens,
                "image_cached_input": usage.cached_image_tokens,
                "text_output": usage.output_text_tokens,
                "audio_output": usage.output_audio_tokens}
        return [k for k, n in need.items() if n and getattr(self, k) is None]


class PriceTable:
    """Prices by provider and model (``table[provider][model]``), read from TOML.

    The file shape is that of ``telewire/data/prices.toml``: top-level ``version``/``currency``,
    then ``[PROVIDER."MODEL"]`` tables of rates with ``source`` and ``read_on``.
    """

    def __init__(self, entries: Mapping[str, Mapping[str, ModelPrice]] | None = None) -> None:
        self._entries: dict[str, dict[str, ModelPrice]] = {
            p: dict(m) for p, m in (entries or {}).items()}

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, where: str) -> "PriceTable":
        """Raises ConfigError naming ``where`` for a malformed table or a non-USD currency."""
        currency = raw.get("currency", "USD")
        if currency != "USD":
            raise ConfigError(f"{where}: currency must be \"USD\", not {currency!r}")
        entries: dict[str, dict[str, ModelPrice]] = {}
        for provider, models in raw.items():
            if provider in ("version", "currency"):
                continue
            if not isinstance(models, Mapping):
                raise ConfigError(f"{where}: [{provider}] must be a table of models")
            entries[provider] = {m: ModelPrice.parse(m, r, where=f"{where} [{provider}]")
                                 for m, r in models.items()}
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path) -> "PriceTable":
        """Read a prices file. Raises ConfigError when it is missing or malformed."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"prices_file {str(path)!r}: {exc.strerror or exc}") from None
        try:
            raw = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"prices_file {str(path)!r}: not valid TOML: {exc}") from None
        return cls.parse(raw, where=f"prices_file {str(path)!r}")

    def merged(self, other: "PriceTable") -> "PriceTable":
        """A copy with ``other``'s entries replacing ours model by model."""
        out = PriceTable(self._entries)
        for provider, models in other._entries.items():
            out._entries.setdefault(provider, {}).update(models)
        return out

    def with_models(self, provider: str, models: Mapping[str, ModelPrice]) -> "PriceTable":
        return self.merged(PriceTable({provider: models}))

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of ``model`` at ``provider``: as written, then without a trailing snapshot
        date (``gpt-realtime-2025-08-28`` → ``gpt-realtime``), then the provider's ``"*"`` entry
        (any model); ``None`` when unknown."""
        models = self._entries.get(provider) or {}
        found = models.get(model)
        if found is None:
            found = models.get(_SNAPSHOT.sub("", model))
        if found is None:
            found = models.get("*")
        return found

    def models(self, provider: str) -> list[str]:
        return sorted(self._entries.get(provider) or ())


_DEFAULT: PriceTable | None = None


def default_prices() -> PriceTable:
    """The table shipped in ``telewire/data/prices.toml`` (parsed once)."""
    global _DEFAULT
    if _DEFAULT is None:
        text = resources.files("telewire").joinpath("data/prices.toml").read_text("utf-8")
        _DEFAULT = PriceTable.parse(tomllib.loads(text, parse_float=Decimal),
                                    where="telewire/data/prices.toml")
    return _DEFAULT


# -- the running figure of one call ----------------------------------------------------------------

_warned: set[tuple[str, str, str]] = set()


def _warn_once(provider: str, model: str, why: str) -> None:
    key = (provider, model, why)
    if key not in _warned:
        _warned.add(key)
        logger.warning("cost of {} model {!r} is unknown: {}; set rt.config.prices to price it "
                       "(docs/cost.md)", provider, model, why)


@dataclass(eq=False)
class CallCost:
    """The model cost of one call so far.

    Attributes:
        provider, model: what is priced.
        price: the model's entry in the price table, ``None`` when the model is not in it.
        usage: the usage added so far (token and seconds totals).
        responses: how many usages were added.
        usd: exact USD so far; ``None`` once any usage could not be priced (the total is then
            unknown, not a partial figure).
    """

    provider: str
    model: str
    price: ModelPrice | None
    usage: Usage = field(default_factory=Usage)
    responses: int = 0
    usd: Decimal | None = field(default=None, init=False)
    _listeners: list[Callable[["CallCost"], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.usd = Decimal(0) if self.price is not None else None
        if self.price is None:
            _warn_once(self.provider, self.model, "it is not in the price table")

    @classmethod
    def for_model(cls, provider: str, model: str,
                  prices: PriceTable | None = None) -> "CallCost":
        return cls(provider, model, (prices or default_prices()).lookup(provider, model))

    @property
    def known(self) -> bool:
        return self.usd is not None

    @property
    def usd_float(self) -> float | None:
        """:attr:`usd` as a float (for span attributes and metrics)."""
        return None if self.usd is None else float(self.usd)

    @property
    def micro_usd(self) -> int | None:
        """:attr:`usd` in whole micro-dollars, rounded half up."""
        if self.usd is None:
            return None
        return int((self.usd * _MILLION).to_integral_value(rounding="ROUND_HALF_UP"))

    def subscribe(self, listener: Callable[["CallCost"], None]) -> None:
        """Call ``listener(self)`` after every :meth:`add` (e.g. to update a span attribute).
        A listener's exception is logged and does not stop the call."""
        self._listeners.append(listener)

    def add(self, usage: Usage) -> Decimal | None:
        """Add one usage; returns its cost (``None`` when unknown) and updates :attr:`usd`."""
        u = self.usage
        self.usage = Usage(
            kind=u.kind if self.responses else usage.kind,
            **{f.name: getattr(u, f.name) + getattr(usage, f.name)
               for f in fields(Usage) if f.name != "kind"})
        self.responses += 1
        cost: Decimal | None = None
        if self.price is not None:
            cost = self.price.cost(usage)
            if cost is None:
                _warn_once(self.provider, self.model,
                           "the price table has no " + ", ".join(self.price.missing_for(usage)))
        if cost is None:
            self.usd = None
        elif self.usd is not None:
            self.usd += cost
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:
                logger.exception("a CallCost listener failed")
        return cost

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary: ``usd`` as an exact decimal string (or ``None``), the price's source
        and date, and the usage totals."""
        return {
            "usd": None if self.usd is None else str(self.usd),
            "currency": "USD",
            "provider": self.provider,
            "model": self.model,
            "price_source": self.price.source if self.price else None,
            "price_read_on": self.price.read_on if self.price else None,
            "responses": self.responses,
            "usage": self.usage.as_dict(),
        }


def call_cost(call: Any) -> list[CallCost]:
    """The :class:`CallCost` of every node of ``call`` (a CallGraph) that keeps one as its
    ``cost`` attribute (the ``realtime_agent`` nodes), in node order."""
    nodes: Iterable[Any] = getattr(call, "nodes", {}).values()
    return [n.cost for n in nodes if isinstance(getattr(n, "cost", None), CallCost)]


def total_usd(costs: Iterable[CallCost]) -> Decimal | None:
    """The sum of ``costs`` (``None`` when any is unknown or there are none)."""
    total = Decimal(0)
    seen = False
    for c in costs:
        if c.usd is None:
            return None
        total += c.usd
        seen = True
    return total if seen else None
