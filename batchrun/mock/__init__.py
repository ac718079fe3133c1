"""The built-in Mistral-compatible mock server: HTTP (server.py), which fault or delay a
request gets (faults.py), what replies say (replies.py) and the fault names (kinds.py)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .kinds import FAULT_KINDS

if TYPE_CHECKING:
    from .faults import MockConfig
    from .server import MockServer, serve

__all__ = ["FAULT_KINDS", "MockConfig", "MockServer", "serve"]

_HOMES = {"MockConfig": ".faults", "MockServer": ".server", "serve": ".server"}


def __getattr__(name: str) -> object:
    # Lazy, so the CLI can read kinds.py without loading the server into `batchrun run`.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
