"""The adaptive in-flight limit (AIMD): how many requests may be out at once, cut on
congestion and grown while the pool is busy. Pure: time is passed in as a clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["AdaptiveLimit"]

Clock = Callable[[], float]


class AdaptiveLimit:
    """The in-flight limit, additive increase / multiplicative decrease.

    Congestion (a 429, or `overload_streak` 503s/timeouts in a row) cuts it, at most once
    per `cooldown`, and not again before a success: one storm, however long, is one cut
    (the shared pause is what waits it out; cutting to 1 would only slow the recovery).
    It grows by one per round of successes, and
    only while the pool is full: an idle pool proves nothing about a larger one. Latency
    is no signal: long answers are slow by nature."""

    def __init__(
        self,
        maximum: int,
        *,
        clock: Clock = time.monotonic,
        decrease: float = 0.5,
        cooldown: float = 5.0,
        overload_streak: int = 3,
    ) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, not {maximum}")
        self.maximum = maximum
        self.limit = maximum
        self.cuts = 0
        self._clock = clock
        self._decrease = decrease
        self._cooldown = cooldown
        self._streak_needed = overload_streak
        self._streak = 0
        self._credit = 0.0
        self._last_cut = -math.inf
        self._success_since_cut = True

    def on_rate_limited(self) -> None:
        """A 429: the server says we send too much."""
        self._streak = 0
        self._cut()

    def on_overload(self) -> None:
        """A 503 or a timeout: congestion only when it repeats."""
        self._streak += 1
        if self._streak >= self._streak_needed:
            self._streak = 0
            self._cut()

    def on_success(self, in_flight: int) -> None:
        """A reply arrived while `in_flight` requests (itself included) were out."""
        self._streak = 0
        self._success_since_cut = True
        if in_flight < self.limit or self.limit >= self.maximum:
            return
        if self._clock() - self._last_cut < self._cooldown:
            return  # requests sent before the cut are still returning
        self._credit += 1 / self.limit
        if self._credit >= 1:
            self._credit = 0.0
            self.limit += 1

    def _cut(self) -> None:
        now = self._clock()
        if now - self._last_cut < self._cooldown or not self._success_since_cut:
            return
        self._last_cut = now
        self._success_since_cut = False
        self._credit = 0.0
        self.limit = max(1, int(self.limit * self._decrease))
        self.cuts += 1
