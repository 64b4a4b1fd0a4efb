"""A frame sink for session tests: collects the frames a realtime session emits."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from telewire.frames import Frame

F = TypeVar("F", bound=Frame)


class Sink:
    """Collects the frames a session emits and lets a test wait for them."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()

    def of(self, cls: type[F]) -> list[F]:
        return [f for f in self.frames if isinstance(f, cls)]

    async def wait_for(self, cls: type[F], count: int = 1, timeout: float = 10.0) -> list[F]:
        async with asyncio.timeout(timeout):
            while len(found := self.of(cls)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found
