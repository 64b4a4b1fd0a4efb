"""The ``telewire`` pytest plugin (entry point ``pytest11``): fixtures for carrier and app tests.

Depends on pytest at import time only; telewire's registry is imported when a fixture is first used.

Installed with telewire, so it loads in every pytest run of the environment: it defines fixtures
and nothing else (no hooks, no options, no imports of plugins), so unrelated suites pay nothing.
The carrier conformance kit itself is :mod:`telewire.testing.conformance`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import pytest

if TYPE_CHECKING:
    from telewire.carrier import CallContext
    from telewire.graph import Graph
    from telewire.registry import CarrierRegistry
    from telewire.server import ObserverFactory, TelewireServer

__all__ = ["carrier_registry", "new_call", "telewire_server"]


@pytest.fixture(scope="session")
def carrier_registry() -> CarrierRegistry:
    """The installed carriers, discovered through entry points once per test session."""
    from telewire.registry import CarrierRegistry

    return CarrierRegistry()


@pytest.fixture
def new_call(carrier_registry: CarrierRegistry) -> Callable[[str], CallContext]:
    """Factory: ``new_call("twilio")`` is a fresh per-call context for that carrier."""

    def make(carrier: str) -> CallContext:
        return carrier_registry.get(carrier).new_call()

    return make


@pytest.fixture
async def telewire_server() -> AsyncIterator[Callable[..., Awaitable[TelewireServer]]]:
    """Factory: a real :class:`~telewire.server.TelewireServer` on 127.0.0.1 and a free port,
    stopped when the test ends.

    ``await telewire_server("rt.config.provider=openai", graph=None, observers=None,
    max_calls=5)``: positional ``NODE.config.KEY=VALUE`` overrides of the default graph (or of
    ``graph``, when given a loaded one they are not applied), an observer factory, and any
    process setting as keywords. The server's port is ``server.port``.
    """
    from telewire.graph import load_graph
    from telewire.registry import CarrierRegistry
    from telewire.server import TelewireServer
    from telewire.settings import load_settings

    servers: list[TelewireServer] = []

    async def make(*overrides: str, graph: Graph | None = None,
                   observers: ObserverFactory | None = None, **settings: Any) -> TelewireServer:
        srv = TelewireServer(load_settings(host="127.0.0.1", port=0, **settings),
                             graph if graph is not None else load_graph(None, overrides),
                             CarrierRegistry(), observers=observers)
        await srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop(drain_timeout_s=5)
