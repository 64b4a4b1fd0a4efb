"""Headless Chromium driven over the DevTools protocol (CDP), for the operator page's tests.

Raw CDP over ``websockets`` (a telewire dependency already) rather than Playwright: no new
dependency, no browser download, no driver whose version must match the system's Chromium, and
the few commands these tests need (open a page, evaluate, type, click) are a page of code.
Chromium runs ``--headless`` with a throw-away profile, every host name but ``127.0.0.1``
unresolvable and its background services off, so it touches nothing but the loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

#: where Debian's ``chromium`` package puts the browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

FLAGS = [
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-pings",
    "--password-store=basic",
    # only the loopback: any other host name fails to resolve, and no proxy is used
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--no-proxy-server",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class CDPError(RuntimeError):
    """Chromium answered a command with an error."""


class Browser:
    """One headless Chromium process and its DevTools connection."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        #: every event received, as (session id, method, params)
        self.events: list[tuple[str | None, str, dict[str, Any]]] = []

    async def __aenter__(self) -> "Browser":
        assert CHROMIUM, "chromium is not installed"
        flags = [*FLAGS, f"--user-data-dir={self.profile}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
        self.proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *flags, "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        for _ in range(600):  # written once the DevTools server listens
            if active.exists() and len(active.read_text().split()) >= 2:
                break
            if self.proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("chromium did not open its DevTools port")
        port, path = active.read_text().split()[:2]
        self.ws = await connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.wait_for(self.send("Browser.close"), 5)
        except Exception:
            pass
        self._reader.cancel()
        await self.ws.close()
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                waiter = self._waiting.pop(message["id"], None)
                if waiter is not None and not waiter.done():
                    if "error" in message:
                        waiter.set_exception(CDPError(message["error"]))
                    else:
                        waiter.set_result(message.get("result", {}))
            else:
                self.events.append((message.get("sessionId"), message["method"],
                                    message.get("params", {})))

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[ident] = waiter
        await self.ws.send(json.dumps(message))
        return await asyncio.wait_for(waiter, 30)

    async def new_page(self) -> "Page":
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        return page


class Page:
    """One tab, through its flattened DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    def events(self, method: str) -> list[dict[str, Any]]:
        return [p for s, m, p in self.browser.events if s == self.session and m == method]

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href === "
                            + json.dumps(url))

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", {"expression": expression,
                                                      "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in answer:
            raise CDPError(answer["exceptionDetails"])
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy (a generous deadline, not a pace)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.05)

    async def type(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` into it, as a keyboard would insert it."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of ``selector``."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                         "button": "left", "clickCount": 1})

    def requests(self) -> list[dict[str, Any]]:
        """Every request the page sent: ``{"url", "method", "headers"}``."""
        return [p["request"] for p in self.events("Network.requestWillBeSent")]

    def problems(self) -> list[str]:
        """Script exceptions and console/security errors the page logged."""
        found = [str(p.get("exceptionDetails", {}).get("exception", {}).get("description") or p)
                 for p in self.events("Runtime.exceptionThrown")]
        found += [p["entry"].get("text", "") for p in self.events("Log.entryAdded")
                  if p["entry"].get("level") == "error"]
        return found
