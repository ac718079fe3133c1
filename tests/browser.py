"""A real headless browser for tests: Debian's chromium driven over the DevTools protocol
(a websocket, through aiohttp, which batchrun already depends on: no browser download,
no driver package). Every step is bounded in time and the browser never outlives a call.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson

__all__ = ["CHROMIUM", "PageVisit", "visit"]

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)


@dataclass
class PageVisit:
    """What a page did once loaded: its console errors and uncaught exceptions, and the
    value of the expression evaluated in it."""

    errors: list[str] = field(default_factory=list)
    value: Any = None


def visit(url: str, ready: str, expression: str, timeout: float = 60) -> PageVisit:
    """Open `url`, wait until the JavaScript `ready` is truthy, then evaluate `expression`
    (its value must be JSON). Raises TimeoutError past `timeout` seconds in all."""
    assert CHROMIUM is not None, "no chromium on this machine"
    return anyio.run(_visit, CHROMIUM, url, ready, expression, timeout)


async def _visit(chromium: str, url: str, ready: str, expression: str, timeout: float) -> PageVisit:
    with anyio.fail_after(timeout), tempfile.TemporaryDirectory() as profile:
        async with _browser(chromium, Path(profile)) as port, aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
                targets = await reply.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                session = _Session(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await session.call(f"{domain}.enable")
                await session.call("Page.navigate", url=url)
                await session.until_event("Page.loadEventFired")
                while not await session.evaluate(f"Boolean({ready})"):
                    await anyio.sleep(0.05)
                value = await session.evaluate(expression)
                return PageVisit(session.errors, value)


@contextlib.asynccontextmanager
async def _browser(chromium: str, profile: Path) -> AsyncIterator[int]:
    """Headless chromium on a port of its choosing (read from DevToolsActivePort), in its
    own process group so that its helper processes end with it."""
    args = [
        chromium,
        "--headless",
        "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        active = profile / "DevToolsActivePort"
        while not active.exists() or not active.read_text().strip():
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            await anyio.sleep(0.05)
        yield int(active.read_text().split()[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class _Session:
    """Calls on one page's websocket; events seen meanwhile are kept, errors collected."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self.events: list[str] = []
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(
            orjson.dumps({"id": self.next_id, "method": method, "params": params}).decode()
        )
        while True:
            message = await self._receive()
            if message.get("id") == self.next_id:
                assert "error" not in message, message["error"]
                result: dict[str, Any] = message.get("result", {})
                return result

    async def until_event(self, method: str) -> None:
        while method not in self.events:
            await self._receive()

    async def evaluate(self, expression: str) -> Any:
        found = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in found, found["exceptionDetails"]
        return found["result"].get("value")

    async def _receive(self) -> dict[str, Any]:
        received = await self.ws.receive()
        assert received.type == aiohttp.WSMsgType.TEXT, f"DevTools socket: {received.type!r}"
        message: dict[str, Any] = orjson.loads(received.data)
        method = message.get("method")
        if method is not None:
            self.events.append(method)
            self._collect_error(method, message.get("params", {}))
        return message

    def _collect_error(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            thrown = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {thrown}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry.get('source')}): {entry.get('text')}")
