"""Plain values the carrier hooks exchange with the core: capabilities, per-call context, HTTP views.

Depends only on ``telewire.frames``; ``hookspecs`` and every carrier plugin import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from telewire.frames import PCMU_8K, Frame, MediaFormat, StartFrame

if TYPE_CHECKING:
    from telewire.envelope import CompiledEnvelope

__all__ = ["CallContext", "Capabilities", "HttpRequest", "HttpResponse", "OutboundRequest",
           "WebhookEvent"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a carrier's media socket can do. The core adapts to what is missing.

    Attributes:
        clear: the carrier can drop audio it has buffered (barge-in without waiting).
        marks: the carrier echoes named marks when the audio before them has played.
        dtmf: DTMF arrives on the media socket (``False``: by webhook or not at all).
        hangup: the carrier can end the call (closing the socket or a REST call).
        text_frames_only: the socket carries only text frames (binary frames are refused).
        media_format: the audio format on the socket, both directions.
        max_message_bytes: the largest inbound message accepted; larger ones are refused.
        envelope_driven: the carrier is configured by the graph's envelope spec (``sip_bridge``);
            its effective capabilities per call are these narrowed to what the spec can express.
        transfer: the carrier can transfer a call elsewhere (the ``transfer_call`` tool).
    """

    clear: bool = True
    marks: bool = True
    dtmf: bool = True
    hangup: bool = True
    text_frames_only: bool = True
    media_format: MediaFormat = PCMU_8K
    max_message_bytes: int = 64 * 1024
    envelope_driven: bool = False
    transfer: bool = False


@dataclass(slots=True, kw_only=True)
class CallContext:
    """Per-call state handed to every carrier hook for that call.

    The core fills the identity fields from the call's :class:`~telewire.frames.StartFrame`.
    ``state`` is the plugin's own scratch space for this call (hooks keep no globals).
    ``envelope`` is the envelope compiled from the graph's ``tel_in.config.envelope_spec`` /
    ``tel_out.config.response_envelope_spec``, when the graph gives one (carriers configured
    entirely by envelope specs use it; others ignore it). ``capabilities`` are the carrier's
    effective capabilities for this call (see :meth:`telewire.registry.Carrier.capabilities_for`).
    """

    carrier: str
    stream_id: str = ""
    call_id: str = ""
    account_id: str = ""
    started: bool = False
    stopped: bool = False
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    media_format: MediaFormat = PCMU_8K
    state: dict[str, Any] = field(default_factory=dict)
    envelope: CompiledEnvelope | None = None
    capabilities: Capabilities | None = None

    def apply_start(self, start: StartFrame) -> None:
        """Take the call's identity from its start frame."""
        self.stream_id = start.stream_id
        self.call_id = start.call_id
        self.account_id = start.account_id
        self.custom_parameters = start.custom_parameters
        self.media_format = start.media_format
        self.started = True


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequest:
    """What a carrier hook needs to know of an HTTP request (webhook or WebSocket upgrade).

    Attributes:
        method: ``"GET"`` or ``"POST"`` …
        url: the full URL as the carrier addressed it (public scheme and host, path, query);
            for a WebSocket upgrade the scheme is ``ws``/``wss``.
        headers: header names lower-cased.
        form: decoded ``application/x-www-form-urlencoded`` body parameters (POST), in order.
        query: query-string parameters.
        body: the raw body.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    form: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return header ``name`` (case-insensitive) or ``default``."""
        return self.headers.get(name.lower(), default)

    def params(self) -> dict[str, str]:
        """Query and form parameters merged (form wins), last value per name."""
        merged = dict(self.query)
        merged.update(self.form)
        return merged


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpResponse:
    """A document for the core to send back to a carrier webhook."""

    body: str
    content_type: str = "application/xml"
    status: int = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookEvent:
    """Frames a carrier delivers by webhook rather than on the media socket (Bandwidth DTMF).

    Attributes:
        call_id: the carrier's call id; the core routes ``frames`` into that live call.
        frames: the frames, in order (``DTMFFrame`` …).
        response: the document to answer the webhook with; ``None`` answers ``204``.
    """

    call_id: str
    frames: tuple[Frame, ...] = ()
    response: HttpResponse | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundRequest:
    """An HTTP request a carrier hook asks the core to make (a REST call: dial, transfer).

    The hook builds it without I/O; the core sends it with a timeout and reports the outcome.
    ``headers`` may carry credentials: the core never logs them.

    Attributes:
        method: ``"POST"`` …
        url: the absolute URL.
        headers: request headers (``Authorization`` …).
        form: an ``application/x-www-form-urlencoded`` body, in order; a name may repeat.
        json: a JSON body instead (``form`` must then be empty).
        id_field: for a request that creates a call (``telewire_dial_request``), the field of
            the 2xx JSON response that holds the new call's id (Twilio ``sid``, Bandwidth
            ``callId``).
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    form: tuple[tuple[str, str], ...] = ()
    json: Mapping[str, Any] | None = None
    id_field: str = ""
