"""telewire: a speech-to-speech realtime model behind a phone carrier, mu-law untouched.

The public API: what carrier plugins, node types, providers and applications may import.
Anything not listed in ``__all__`` is internal and may change without notice.
"""

from __future__ import annotations

from telewire.carrier import CallContext, Capabilities, HttpRequest, HttpResponse
from telewire.envelope import (
    CompiledEnvelope,
    EnvelopeSpec,
    ResponseEnvelopeSpec,
    compile_envelope,
    load_envelope_file,
)
from telewire.errors import (
    AuthenticationError,
    CarrierError,
    CarrierProtocolError,
    ConfigError,
    DialError,
    GraphError,
    PluginError,
    ProviderError,
    ProviderProtocolError,
    TelewireError,
)
from telewire.frames import (
    AnsweredByFrame,
    AudioFrame,
    DTMFFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptFrame,
    MarkFrame,
    MediaFormat,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
)
from telewire.hookspecs import hookimpl
from telewire.nodes.base import CallHandle, Handler, Node, NodeConfig
from telewire.realtime.base import (
    FrameSink,
    ProviderCapabilities,
    ProviderConfig,
    RealtimeSession,
    ToolSpec,
)
from telewire.settings import CarrierSettings, read_settings

__version__ = "0.1.0"

__all__ = [
    "AnsweredByFrame",
    "AudioFrame",
    "AuthenticationError",
    "CallContext",
    "CallHandle",
    "Capabilities",
    "CarrierError",
    "CarrierProtocolError",
    "CarrierSettings",
    "CompiledEnvelope",
    "ConfigError",
    "DTMFFrame",
    "DialError",
    "EndFrame",
    "EnvelopeSpec",
    "ErrorFrame",
    "Frame",
    "FrameSink",
    "GraphError",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "InterruptFrame",
    "MarkFrame",
    "MediaFormat",
    "Node",
    "NodeConfig",
    "PluginError",
    "ProviderCapabilities",
    "ProviderConfig",
    "ProviderError",
    "ProviderProtocolError",
    "RealtimeSession",
    "ResponseEnvelopeSpec",
    "StartFrame",
    "SteerFrame",
    "TelewireError",
    "ToolSpec",
    "TranscriptFrame",
    "UsageFrame",
    "__version__",
    "compile_envelope",
    "hookimpl",
    "load_envelope_file",
    "read_settings",
]
