"""The adaptive in-flight limit: how many requests may be out at once, found the way TCP
finds a window (slow start, additive increase, multiplicative decrease). Pure: time is
passed in as a clock; flow.py's gate enforces it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["INITIAL_LIMIT", "AdaptiveLimit"]

Clock = Callable[[], float]
# A run starts with this many requests out, not the whole pool: a key with no allowance
# (or no access) then costs a handful of requests, not one per worker. Slow start
# doubles it every round of replies, so a healthy run is at full concurrency after
# log2(concurrency / 4) round trips.
INITIAL_LIMIT = 4


class AdaptiveLimit:
    """The in-flight limit.

    Growth: +1 per success while below `threshold` (slow start: doubles per round),
    then +1 per round of successes; and only while the pool is full (`in_flight` at the
    limit): an idle pool proves nothing about a larger one.

    Congestion (a 429 or 401/403, or `overload_streak` 503s/timeouts in a row) halves it. Only
    requests sent after the last cut count, for cuts and for growth alike: those sent
    before it report on the old limit, and a burst of them is one congestion event,
    not many. So a storm halves the limit once per round of probes, down to 1, and
    costs few requests; the first cut of an episode keeps half the old limit as
    `threshold`, so when the storm ends slow start brings the limit back there within a
    few round trips. Latency is no signal: long answers are slow by nature."""

    def __init__(
        self,
        maximum: int,
        *,
        clock: Clock = time.monotonic,
        initial: int = INITIAL_LIMIT,
        decrease: float = 0.5,
        overload_streak: int = 3,
    ) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, not {maximum}")
        self.maximum = maximum
        self.limit = max(1, min(initial, maximum))
        self.threshold = maximum
        self.lowest = self.limit
        self.cuts = 0
        self._clock = clock
        self._decrease = decrease
        self._streak_needed = overload_streak
        self._streak = 0
        self._credit = 0.0
        self._last_cut = -math.inf
        self._success_since_cut = True

    def on_refused(self, sent_at: float) -> None:
        """A 429 (we send too much) or a 401/403 (the key is refused: while the stop
        rule counts its streak, fewer requests go out) for a request sent at `sent_at`."""
        self._streak = 0
        self._cut(sent_at)

    def on_overload(self, sent_at: float) -> None:
        """A 503 or a timeout: congestion only when it repeats."""
        self._streak += 1
        if self._streak >= self._streak_needed:
            self._streak = 0
            self._cut(sent_at)

    def on_success(self, in_flight: int, sent_at: float) -> None:
        """A reply arrived while `in_flight` requests (itself included) were out."""
        self._streak = 0
        if sent_at < self._last_cut:
            return  # sent under the old limit: says nothing about the new one
        self._success_since_cut = True
        limit = self.limit
        if in_flight < limit or limit >= self.maximum:
            return
        if limit < self.threshold:
            self.limit = limit + 1
            return
        self._credit += 1 / limit
        if self._credit >= 1:
            self._credit = 0.0
            self.limit = limit + 1

    def _cut(self, sent_at: float) -> None:
        if sent_at < self._last_cut:
            return  # part of the congestion the last cut answered
        if self._success_since_cut:  # a new episode: remember where it started
            self.threshold = max(1, int(self.limit * self._decrease))
        self._last_cut = self._clock()
        self._success_since_cut = False
        self._credit = 0.0
        self.limit = max(1, int(self.limit * self._decrease))
        self.lowest = min(self.lowest, self.limit)
        self.cuts += 1
