"""Strict checks of realtime events against the ``openai`` package's published GA types (tests only).

Depends on ``openai`` (test-only reference for the published API shape) and ``pydantic``.

The ``openai`` models accept unknown fields (``extra="allow"``), so validating alone would let a
misspelt or beta-only field through. :func:`assert_ga` therefore also requires that no model in the
validated tree kept an extra field and that the dump of what was validated equals the input.
"""

from __future__ import annotations

from typing import Any, Mapping, get_args

import pydantic
from openai.types.realtime import RealtimeSessionCreateResponse
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

# Fields the live server adds to the session object of session.created / session.updated; the
# SDK types them on RealtimeSessionCreateResponse, which the session is checked against in full.
_SESSION_RESPONSE_ONLY = ("id", "object", "expires_at")


def _by_type(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    members = get_args(get_args(union)[0])  # Annotated[Union[...], PropertyInfo] -> members
    table = {}
    for model in members:
        (literal,) = get_args(model.model_fields["type"].annotation)
        table[literal] = model
    return table


CLIENT_EVENTS = _by_type(RealtimeClientEvent)
SERVER_EVENTS = _by_type(RealtimeServerEvent)


def _extras(value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [f"{path}.{key}" for key in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _extras(item, f"{path}.{key}")
    return found


def assert_model(model: type[pydantic.BaseModel], data: Mapping[str, Any]) -> None:
    """Assert ``data`` is exactly an instance of ``model``: valid, no unknown field anywhere, and
    the validated value dumps back to ``data``."""
    obj = model.model_validate(data)
    extras = _extras(obj, model.__name__)
    assert not extras, f"fields unknown to openai's {model.__name__}: {extras}"
    dumped = obj.model_dump(mode="json", exclude_unset=True)
    assert dumped == data, f"{model.__name__} does not round-trip:\n{dumped}\n!=\n{data}"


def assert_ga(event: Mapping[str, Any], *, side: str) -> None:
    """Assert one event is a published GA realtime event (``side`` is ``"client"`` or ``"server"``)."""
    table = CLIENT_EVENTS if side == "client" else SERVER_EVENTS
    kind = event.get("type")
    assert kind in table, f"{kind!r} is not a GA realtime {side} event in the openai package"
    if kind in ("session.created", "session.updated"):
        session = event["session"]
        assert_model(RealtimeSessionCreateResponse, session)
        trimmed = {k: v for k, v in session.items() if k not in _SESSION_RESPONSE_ONLY}
        event = {**event, "session": trimmed}
    assert_model(table[kind], event)
