"""Carrier discovery and the typed facade through which the core calls carrier hooks.

Depends on ``telewire.hookspecs``, ``telewire.carrier``, ``telewire.frames`` and
``telewire.errors``. Nothing outside this module touches ``pm.hook``.

stevedore discovers plugins in entry-point group ``telewire.carriers`` (a plugin that fails to
load is recorded with its name and error while the rest load); pluggy validates each against the
hookspec (``check_pending``) and calls it. A :class:`Carrier` binds one carrier's hooks once, so
the per-frame path is one pluggy call on one implementation.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

import pluggy
from loguru import logger

from telewire import hookspecs
from telewire.carrier import (
    CallContext,
    Capabilities,
    HttpRequest,
    HttpResponse,
    OutboundRequest,
    WebhookEvent,
)
from telewire.errors import CarrierError, ConfigError, PluginError
from telewire.frames import AudioFrame, Frame
from telewire.plugins import LoadFailure, PluginInfo, entry_point_origin, load_group

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

__all__ = [
    "CARRIER_GROUP",
    "Carrier",
    "CarrierRegistry",
    "LoadFailure",
    "PluginInfo",
    "default_registry",
    "entry_point_origin",
]

CARRIER_GROUP = "telewire.carriers"
_REQUIRED_HOOKS = (
    "telewire_carrier_capabilities",
    "telewire_parse_inbound",
    "telewire_wrap_audio",
)


class Carrier:
    """One carrier's hooks, bound once, called by keyword, with plugin failures turned into
    :class:`~telewire.errors.PluginError` naming carrier and hook.

    Carrier errors (:class:`~telewire.errors.CarrierError`) raised by a hook pass through
    unchanged: they are the remote side's fault, not the plugin's.
    """

    __slots__ = ("name", "capabilities", "distribution", "version", "_parse", "_wrap",
                 "_mark", "_clear", "_answer", "_auth", "_settings", "_warnings", "_webhook", "_hangup", "_transfer",
                 "_dial", "answers_calls")

    def __init__(self, name: str, hook: Any, distribution: str = "", version: str = "") -> None:
        self.name = name
        self.distribution = distribution
        self.version = version
        self._parse = _direct(hook.telewire_parse_inbound, ("call", "message"))
        self._wrap = _direct(hook.telewire_wrap_audio, ("call", "frame"))
        self._mark = hook.telewire_build_mark
        self._clear = hook.telewire_build_clear
        self._answer = hook.telewire_answer_document
        self._auth = hook.telewire_authenticate
        self._settings = hook.telewire_carrier_settings
        self._warnings = hook.telewire_carrier_warnings
        self._webhook = hook.telewire_parse_webhook
        self._hangup = hook.telewire_hangup
        self._transfer = hook.telewire_transfer_request
        self._dial = hook.telewire_dial_request
        #: the carrier implements the answer webhook (so its calls can carry a call token)
        self.answers_calls = bool(hook.telewire_answer_document.get_hookimpls())
        caps = self._call("telewire_carrier_capabilities", hook.telewire_carrier_capabilities)
        if not isinstance(caps, Capabilities):
            raise PluginError(
                f"carrier {name!r}: telewire_carrier_capabilities returned {caps!r}, "
                "not a telewire.Capabilities",
                plugin=name, hook="telewire_carrier_capabilities",
            )
        self.capabilities: Capabilities = caps

    def _call(self, hook_name: str, caller: Any, **kwargs: Any) -> Any:
        try:
            return caller(**kwargs)
        except (CarrierError, ConfigError, PluginError):
            raise
        except Exception as exc:
            raise PluginError(
                f"carrier {self.name!r}: hook {hook_name} raised {type(exc).__name__}: {exc}",
                plugin=self.name, hook=hook_name,
            ) from exc

    def capabilities_for(self, envelope: Any) -> Capabilities:
        """The capabilities in force for a call: an envelope-driven carrier's are narrowed to
        what the graph's envelope spec can express; any other carrier's are its own."""
        if self.capabilities.envelope_driven and envelope is not None:
            return envelope.capabilities(self.capabilities)
        return self.capabilities

    def new_call(self, envelope: Any = None) -> CallContext:
        """A fresh per-call context for this carrier (``envelope``: the graph's, if any)."""
        caps = self.capabilities_for(envelope)
        return CallContext(carrier=self.name, media_format=caps.media_format, envelope=envelope,
                           capabilities=caps)

    def parse_inbound(self, call: CallContext, message: str | bytes) -> Sequence[Frame]:
        """Parse one inbound message (see ``telewire_parse_inbound``)."""
        try:
            frames = self._parse(call, message)
        except (CarrierError, PluginError):
            raise
        except Exception as exc:
            raise PluginError(
                f"carrier {self.name!r}: hook telewire_parse_inbound raised "
                f"{type(exc).__name__}: {exc}", plugin=self.name, hook="telewire_parse_inbound",
            ) from exc
        if frames is None:
            raise PluginError(f"carrier {self.name!r}: telewire_parse_inbound returned None",
                              plugin=self.name, hook="telewire_parse_inbound")
        return frames

    def wrap_audio(self, call: CallContext, frame: AudioFrame) -> str | bytes:
        """Wrap agent audio (see ``telewire_wrap_audio``)."""
        try:
            out = self._wrap(call, frame)
        except Exception as exc:
            raise PluginError(
                f"carrier {self.name!r}: hook telewire_wrap_audio raised "
                f"{type(exc).__name__}: {exc}", plugin=self.name, hook="telewire_wrap_audio",
            ) from exc
        if out is None:
            raise PluginError(f"carrier {self.name!r}: telewire_wrap_audio returned None",
                              plugin=self.name, hook="telewire_wrap_audio")
        return out

    def build_mark(self, call: CallContext, name: str) -> str | bytes | None:
        """A mark message, or ``None`` when the carrier has no marks."""
        return self._call("telewire_build_mark", self._mark, call=call, name=name)

    def build_clear(self, call: CallContext) -> str | bytes | None:
        """A clear message, or ``None`` when the carrier cannot clear."""
        return self._call("telewire_build_clear", self._clear, call=call)

    def hangup(self, call: CallContext, reason: str) -> str | bytes | None:
        """The message that ends the call, or ``None`` when closing the socket is enough."""
        return self._call("telewire_hangup", self._hangup, call=call, reason=reason)

    def transfer_request(self, call: CallContext, target: str) -> OutboundRequest | None:
        """The REST request transferring the call, or ``None`` when the carrier cannot."""
        return self._call("telewire_transfer_request", self._transfer, call=call, target=target)

    def dial_request(self, *, to: str, from_: str, stream_url: str,
                     parameters: Mapping[str, str], answer_url: str, status_url: str,
                     machine_detection: Literal["answer", "message_end"] | None = None
                     ) -> OutboundRequest | None:
        """The REST request placing an outbound call, or ``None`` when the carrier cannot."""
        request = self._call("telewire_dial_request", self._dial, to=to, from_=from_,
                             stream_url=stream_url, parameters=parameters,
                             answer_url=answer_url, status_url=status_url,
                             machine_detection=machine_detection)
        if request is not None and not isinstance(request, OutboundRequest):
            raise PluginError(f"carrier {self.name!r}: telewire_dial_request returned "
                              f"{type(request).__name__}, not a telewire.carrier.OutboundRequest",
                              plugin=self.name, hook="telewire_dial_request")
        return request

    def answer_document(self, request: HttpRequest, stream_url: str,
                        parameters: Mapping[str, str]) -> HttpResponse | None:
        """The answer-webhook document, or ``None`` when the carrier has none."""
        return self._call("telewire_answer_document", self._answer, request=request,
                          stream_url=stream_url, parameters=parameters)

    def authenticate(self, request: HttpRequest,
                     purpose: Literal["webhook", "websocket"]) -> bool | None:
        """Check a request's signature; raises ``AuthenticationError`` when it is bad."""
        return self._call("telewire_authenticate", self._auth, request=request, purpose=purpose)

    def parse_webhook(self, request: HttpRequest) -> WebhookEvent | None:
        """An event webhook's call id and frames, or ``None`` (see ``telewire_parse_webhook``)."""
        event = self._call("telewire_parse_webhook", self._webhook, request=request)
        if event is not None and not isinstance(event, WebhookEvent):
            raise PluginError(f"carrier {self.name!r}: telewire_parse_webhook returned "
                              f"{type(event).__name__}, not a telewire.WebhookEvent",
                              plugin=self.name, hook="telewire_parse_webhook")
        return event

    def warnings(self) -> list[str]:
        """Start-up warnings about this carrier's configuration."""
        return list(self._call("telewire_carrier_warnings", self._warnings) or ())

    def settings_model(self) -> type[BaseSettings] | None:
        """The carrier's pydantic-settings model, when it has one."""
        return self._call("telewire_carrier_settings", self._settings)


def _direct(caller: Any, names: tuple[str, ...]) -> Any:
    """A positional callable for a per-frame hook (``names`` in hookspec order).

    These hooks run 50+ times a second per call and direction. When exactly one plain
    implementation answers (the carrier's own, validated by pluggy at registration) it is
    called directly, skipping pluggy's generic multi-call loop; otherwise (wrappers, several
    implementations) pluggy calls it as usual.
    """
    impls = caller.get_hookimpls()
    if len(impls) == 1 and not impls[0].hookwrapper and not getattr(impls[0], "wrapper", False):
        fn = impls[0].function
        argnames = tuple(impls[0].argnames)
        if argnames == names:
            return fn
        picks = [names.index(a) for a in argnames]
        return lambda *args: fn(*[args[i] for i in picks])
    return lambda *args: caller(**dict(zip(names, args)))


class CarrierRegistry:
    """Discovers carrier plugins and hands out :class:`Carrier` facades by name.

    Args:
        plugins: extra ``name -> plugin object`` pairs registered besides (or instead of) the
            entry points; used by tests and by applications embedding telewire.
        discover: load entry points from group ``telewire.carriers``.
    """

    def __init__(self, plugins: Mapping[str, object] | None = None, *, discover: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[LoadFailure] = []
        self.infos: dict[str, PluginInfo] = {}
        self._carriers: dict[str, Carrier] = {}
        self._lock = threading.Lock()
        if discover:
            self._discover()
        for name, plugin in (plugins or {}).items():
            self._register(name, plugin, PluginInfo(CARRIER_GROUP, name, "", "", ""))

    def _discover(self) -> None:
        found = load_group(CARRIER_GROUP)
        self.failures.extend(found.failures)
        for name, plugin in found.loaded.items():
            info = found.infos[name]
            try:
                self._register(name, plugin, info)
            except PluginError as exc:
                self.failures.append(LoadFailure(name, info.entry_point, info.distribution,
                                                 str(exc), CARRIER_GROUP))
                logger.error("carrier plugin {!r} rejected: {}", name, exc)

    def _register(self, name: str, plugin: object, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"carrier {name!r} breaks the hook contract: {exc}",
                              plugin=name) from None
        except ValueError as exc:
            raise PluginError(f"carrier {name!r}: {exc}", plugin=name) from None
        try:
            self.pm.check_pending()
            impls = {i.name for i in self.pm.get_hookcallers(plugin) or []}
            missing = [h for h in _REQUIRED_HOOKS if h not in impls]
            if missing:
                raise PluginError(f"carrier {name!r} does not implement required hooks: "
                                  + ", ".join(missing), plugin=name)
        except (pluggy.PluginValidationError, PluginError) as exc:
            self.pm.unregister(plugin)
            msg = exc.args[0] if exc.args else str(exc)
            raise PluginError(f"carrier {name!r} breaks the hook contract: {msg}",
                              plugin=name) from None
        self.infos[name] = info

    def envelope_presets(self) -> dict[str, Any]:
        """Every plugin's named envelope specs (``telewire_envelope_presets``).

        Raises:
            ConfigError: two plugins offer the same preset name.
            PluginError: a plugin's hook raised.
        """
        presets: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.telewire_envelope_presets.get_hookimpls():
            try:
                offered = impl.function() or {}
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r}: hook telewire_envelope_presets "
                                  f"raised {type(exc).__name__}: {exc}", plugin=impl.plugin_name,
                                  hook="telewire_envelope_presets") from exc
            for name, value in offered.items():
                if name in presets:
                    raise ConfigError(f"envelope preset {name!r} is offered by both "
                                      f"{owners[name]!r} and {impl.plugin_name!r}")
                presets[name] = value
                owners[name] = impl.plugin_name
        return presets

    def names(self) -> list[str]:
        """Names of the carriers that loaded."""
        return sorted(self.infos)

    def get(self, name: str) -> Carrier:
        """The facade for carrier ``name``, built on first use.

        Raises:
            ConfigError: no such carrier; the message lists the installed ones and any that
                failed to load with their error.
        """
        carrier = self._carriers.get(name)
        if carrier is not None:
            return carrier
        with self._lock:
            carrier = self._carriers.get(name)
            if carrier is None:
                plugin = self.pm.get_plugin(name)
                if plugin is None:
                    raise ConfigError(self._unknown_message(name))
                others = [p for p in self.pm.get_plugins() if p is not plugin]
                hook = _SubsetHooks(self.pm, others)
                info = self.infos[name]
                carrier = Carrier(name, hook, info.distribution, info.version)
                self._carriers[name] = carrier
        return carrier

    def _unknown_message(self, name: str) -> str:
        msg = f"unknown carrier {name!r}; installed: {', '.join(self.names()) or 'none'}"
        for f in self.failures:
            if f.name == name:
                msg += f"; {name!r} is installed but failed to load: {f.error}"
        return msg

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def __iter__(self) -> Iterable[str]:  # type: ignore[override]
        return iter(self.names())


class _SubsetHooks:
    """``hook.<name>`` restricted to one plugin (pluggy's subset hook caller), resolved once."""

    def __init__(self, pm: pluggy.PluginManager, exclude: list[object]) -> None:
        self._pm = pm
        self._exclude = exclude

    def __getattr__(self, name: str) -> Any:
        caller = self._pm.subset_hook_caller(name, remove_plugins=self._exclude)
        setattr(self, name, caller)
        return caller


_default: CarrierRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> CarrierRegistry:
    """The process-wide registry of installed carriers, discovered on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = CarrierRegistry()
    return _default
