"""Test inputs and outputs as JSONL: the request lines tests send and the records they read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

MODEL = "mistral-small-latest"


def chat_request(i: int, fault: str | None = None, **extra: Any) -> dict[str, Any]:
    """Plain request line `i` (its prompt is `line-i`); `fault` asks the mock for one."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"line-{i}"}],
        **extra,
    }
    if fault is not None:
        body["metadata"] = {"mock": {"fault": fault}}
    return body


def write_jsonl(path: Path, lines: Iterable[object]) -> Path:
    """One line per item: bytes as they are (to write broken lines), anything else as JSON."""
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]
