"""The ``sip_bridge`` carrier: a SIP bridge's media socket, described entirely by an envelope spec.

Depends only on telewire's public API (carrier, envelope, errors, frames, hookspecs).

This module object is the pluggy plugin, registered under entry-point group
``telewire.carriers`` as ``sip_bridge``. It knows no protocol of its own: every hook hands the
call to ``call.envelope``, the :class:`~telewire.envelope.CompiledEnvelope` the graph compiled
once from ``tel_in.config.envelope_spec`` (and ``tel_out.config.response_envelope_spec``). The
plugin also ships envelope presets for the bridges it was written for, so a graph can say
``envelope_spec = "asterisk_chan_websocket"`` (or ``"jambonz"``, ``"freeswitch_audio_stream"``,
``"signalwire"``).

Capabilities depend on the spec, so the plugin declares the broadest set (binary frames allowed,
marks, clear, DTMF); a spec without marks or clear makes ``telewire_build_mark`` /
``telewire_build_clear`` return ``None``, which the core treats as "not supported".

A bridge signs nothing, so the media upgrade is authenticated by a shared secret
(``TELEWIRE_SIP_BRIDGE_SECRET``, see :mod:`telewire_sip_bridge.auth`); without one the server
warns at start-up. Ids in the start event are checked by the envelope (safe charset and length,
and the spec's ``[envelope_spec.ids]`` patterns where it pins them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

from telewire.carrier import CallContext, Capabilities, HttpRequest
from telewire.envelope import CompiledEnvelope
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import AudioFrame, Frame, MediaFormat
from telewire.hookspecs import hookimpl

from telewire_sip_bridge.auth import verify_secret
from telewire_sip_bridge.settings import ENV_PREFIX, SipBridgeSettings, load_settings

__all__ = ["CAPABILITIES", "CARRIER", "PRESETS", "PRESET_DIR", "SipBridgeSettings"]

CARRIER = "sip_bridge"
#: The broadest capabilities: what a particular bridge really has is decided by its envelope
#: spec (:meth:`telewire.envelope.CompiledEnvelope.capabilities` narrows these).
CAPABILITIES = Capabilities(
    clear=True,
    marks=True,
    dtmf=True,
    hangup=True,
    text_frames_only=False,
    media_format=MediaFormat(codec="pcmu", sample_rate=8000, channels=1),
    max_message_bytes=64 * 1024,
    envelope_driven=True,
)
#: Where the preset files live.
PRESET_DIR = Path(__file__).with_name("presets")
#: Preset name to its TOML file (``[envelope_spec]`` and ``[response_envelope_spec]``).
PRESETS: Mapping[str, Path] = {
    name: PRESET_DIR / f"{name}.toml"
    for name in ("asterisk_chan_websocket", "jambonz", "freeswitch_audio_stream", "signalwire")
}


def _envelope(call: CallContext) -> CompiledEnvelope:
    envelope = call.envelope
    if envelope is None:
        raise CarrierProtocolError(
            f"{CARRIER}: this graph gives no envelope spec, so sip_bridge cannot read the "
            "bridge's messages; set tel_in.config.envelope_spec to a preset ("
            + ", ".join(sorted(PRESETS)) + "), a TOML file or an inline table",
            carrier=CARRIER, fatal=True,
        )
    return envelope


def _outbound_envelope(call: CallContext, hook: str) -> CompiledEnvelope:
    envelope = call.envelope
    if envelope is None:
        raise ConfigError(f"{CARRIER}: {hook} needs the graph's envelope spec; set "
                          "tel_in.config.envelope_spec")
    return envelope


# ---------------------------------------------------------------------------------------------
# identity
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_carrier_capabilities() -> Capabilities:
    """The broadest capabilities (see :data:`CAPABILITIES`); the envelope spec narrows them."""
    return CAPABILITIES


@hookimpl
def telewire_envelope_presets() -> Mapping[str, Path]:
    """The bundled bridge presets: ``asterisk_chan_websocket``, ``jambonz``,
    ``freeswitch_audio_stream`` and ``signalwire``."""
    return dict(PRESETS)


@hookimpl
def telewire_carrier_settings() -> type[SipBridgeSettings]:
    """The settings model, environment prefix ``TELEWIRE_SIP_BRIDGE_``."""
    return SipBridgeSettings


@hookimpl
def telewire_carrier_warnings() -> Sequence[str]:
    """Warn when the media socket is not authenticated (no shared secret), and when the secret
    may travel in URLs. (Whether an envelope spec is set this plugin cannot know without the
    graph; a call without one is refused with a message saying what to set.)

    Raises:
        ConfigError: a setting is invalid (named by its environment variable).
    """
    settings = load_settings()
    if settings.secret is None:
        return [f"sip_bridge: the media WebSocket is not authenticated: {ENV_PREFIX}SECRET is "
                "not set, so anyone who can reach /media/sip_bridge can open a call; set it and "
                "have the bridge send it (Authorization: Bearer …), or restrict the path at the "
                "network edge"]
    if settings.query_parameter is not None:
        return [f"sip_bridge: {ENV_PREFIX}QUERY_PARAMETER is set, so the shared secret may "
                "arrive in the socket URL, where proxies and the bridge's own logs keep it; "
                "prefer a header"]
    return []


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_parse_inbound(call: CallContext, message: str | bytes) -> Sequence[Frame]:
    """Parse one message with the graph's compiled envelope (text: one JSON parse; binary
    audio: no parse).

    Raises:
        CarrierProtocolError: the message breaks the envelope spec (naming event and field), or,
            fatally, the graph gives no envelope spec.
    """
    return _envelope(call).parse(call, message)


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_wrap_audio(call: CallContext, frame: AudioFrame) -> str | bytes:
    """Agent audio as the envelope says: a JSON text message, or raw bytes for a binary
    message (mu-law as it is; L16 converted from mu-law).

    Raises:
        ConfigError: the graph gives no envelope spec.
        ValueError: the frame's codec cannot be played by the bridge.
    """
    return _outbound_envelope(call, "telewire_wrap_audio").media(call, frame)


@hookimpl
def telewire_build_mark(call: CallContext, name: str) -> str | None:
    """The envelope's mark command, or ``None`` when its spec has none."""
    return _outbound_envelope(call, "telewire_build_mark").mark(call, name)


@hookimpl
def telewire_build_clear(call: CallContext) -> str | None:
    """The envelope's clear command (``FLUSH_MEDIA``, ``killAudio`` …), or ``None`` when its
    spec has none."""
    return _outbound_envelope(call, "telewire_build_clear").clear(call)


@hookimpl
def telewire_hangup(call: CallContext, reason: str) -> str | None:
    """The envelope's hang-up command (chan_websocket ``HANGUP``, jambonz ``disconnect``), or
    ``None`` when its spec has none and closing the socket is the hang-up."""
    return _outbound_envelope(call, "telewire_hangup").hangup(call)


# ---------------------------------------------------------------------------------------------
# control
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_authenticate(
    request: HttpRequest, purpose: Literal["webhook", "websocket"]
) -> bool:
    """Check the shared secret (see :func:`telewire_sip_bridge.auth.verify_secret`).

    Returns:
        ``True`` when the request carries ``TELEWIRE_SIP_BRIDGE_SECRET``; ``False`` when no
        secret is configured, so checking is off (the server warns at start-up).

    Raises:
        AuthenticationError: the secret is missing or wrong, naming the header (and query
            parameter) looked at and the URL without its query, never the secret.
        ConfigError: invalid settings.
    """
    return verify_secret(request, purpose, load_settings())
