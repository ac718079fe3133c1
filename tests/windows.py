"""Window counts for rate checks: how much any window of a given length held, from the
arrival times a mock's request log (or a pacer's bookings) recorded."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from jsonl import read_jsonl

EPS = 1e-9


def arrivals(log: Path) -> list[float]:
    """Arrival times, in order, from a mock request log."""
    return sorted(entry["t"] for entry in read_jsonl(log))


def most_in_any_window(events: Iterable[float | tuple[float, float]], window: float) -> float:
    """The largest total inside any half-open window [t, t + window): each event is an
    arrival time (costing 1) or an (arrival time, cost) pair."""
    timed = sorted(e if isinstance(e, tuple) else (e, 1.0) for e in events)
    best, total, start = 0.0, 0.0, 0
    for at, cost in timed:
        total += cost
        while timed[start][0] <= at - window + EPS:
            total -= timed[start][1]
            start += 1
        best = max(best, total)
    return best
