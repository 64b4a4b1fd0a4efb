"""The errors telewire raises, each saying whose fault it is.

Depends on nothing else in telewire; every other module may import it.

    TelewireError
    ├── CarrierError              the carrier (or whoever is on the media socket) sent something bad
    │   ├── CarrierProtocolError  a message that breaks the carrier's protocol (bad JSON, missing field…)
    │   ├── AuthenticationError   a webhook or handshake whose signature does not check out
    │   └── DialError             the carrier's REST API refused (or did not answer) a call we placed
    ├── ConfigError               our configuration is wrong (graph file, envelope spec, settings)
    │   └── GraphError            a graph that cannot be built (unknown node type, port, mistyped edge)
    ├── PluginError               a plugin broke its contract (raised in a hook, returned the wrong type)
    └── ProviderError             the realtime model provider refused or failed
        └── ProviderProtocolError the provider sent something we cannot use
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CarrierError",
    "CarrierProtocolError",
    "ConfigError",
    "DialError",
    "GraphError",
    "PluginError",
    "ProviderError",
    "ProviderProtocolError",
    "TelewireError",
]


class TelewireError(Exception):
    """Base of every error telewire raises on purpose."""


class CarrierError(TelewireError):
    """The carrier side sent something we cannot accept."""


class CarrierProtocolError(CarrierError):
    """One inbound message broke the carrier protocol.

    Attributes:
        carrier: carrier name, for example ``"twilio"``.
        event: the message's event type when it could be read, else ``None``.
        field: the dotted path of the offending field, when there is one.
        fatal: ``True`` when the call cannot go on (for example media before ``start``
            can still go on; a second ``start`` with another stream id cannot).
    """

    def __init__(
        self,
        message: str,
        *,
        carrier: str = "",
        event: str | None = None,
        field: str | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.carrier = carrier
        self.event = event
        self.field = field
        self.fatal = fatal


class AuthenticationError(CarrierError):
    """A webhook or WebSocket handshake failed the carrier's signature check."""


class DialError(CarrierError):
    """The carrier's REST API refused an outbound call, or could not be reached.

    The message gives the HTTP status and the carrier's own error code and message (which name
    the field it refused), never a credential.

    Attributes:
        carrier: carrier name.
        http_status: the HTTP status the API answered, or ``None`` when it did not answer.
        code: the carrier's error code, when it sent one (Twilio ``21211`` …).
    """

    def __init__(self, message: str, *, carrier: str = "", http_status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.carrier = carrier
        self.http_status = http_status
        self.code = code


class ConfigError(TelewireError):
    """Our own configuration is wrong; the message names the file, key and value."""


class GraphError(ConfigError):
    """A graph file cannot be built; the message names file, node and port."""


class PluginError(TelewireError):
    """A plugin broke its contract.

    Attributes:
        plugin: the plugin's name (carrier name or entry point name).
        hook: the hook that failed, when the failure happened in a hook.
    """

    def __init__(self, message: str, *, plugin: str = "", hook: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class ProviderError(TelewireError):
    """The realtime model provider refused the session or failed.

    Attributes:
        code: the provider's error code when it sent one (``"invalid_api_key"`` …).
        fatal: ``True`` when the session cannot continue.
    """

    def __init__(self, message: str, *, code: str | None = None, fatal: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


class ProviderProtocolError(ProviderError):
    """The provider sent a message we cannot use (not JSON, wrong audio format …)."""
