"""Shared fixtures: the anyio backend and the project's own mock server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from batchrun.mock import MockConfig, MockServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def mock_server() -> Iterator[Callable[..., MockServer]]:
    """Factory: `mock_server(latency_ms=5, fault="500")` starts a real server on a free port."""
    started: list[MockServer] = []

    def start(**options: object) -> MockServer:
        server = MockServer(MockConfig(**options))  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
