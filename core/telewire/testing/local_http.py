"""A throwaway HTTP server on 127.0.0.1 for tests: a stand-in for a carrier's REST API.

Depends on aiohttp only.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

__all__ = ["local_http_server"]


@contextlib.asynccontextmanager
async def local_http_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> AsyncIterator[int]:
    """Serve ``handler`` for every method and path on 127.0.0.1, on a free port; yields the port
    and stops the server on exit."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
