"""Completions over time: records counted by their `finished_at` into buckets of equal
width, with the 429s each line waited out (its `throttled`) counted at its finish.

At most MAX_BUCKETS buckets from the first to the last, however long the run or the gaps
between its sessions: the width starts at one second and doubles as the span needs, so
memory never grows with the number of lines.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_BUCKETS", "Timeline"]

MAX_BUCKETS = 1024
LATEST = 2.0**33  # seconds since the epoch: the year 2242


class Timeline:
    def __init__(self) -> None:
        self.width = 1  # seconds per bucket, a power of two
        self._buckets: dict[int, list[int]] = {}  # bucket -> [ok, failed, throttled]
        self._first: int | None = None
        self._last = 0
        self.untimed = 0  # records with no usable `finished_at` (older, or edited)

    def add(self, finished_at: object, failed: bool, throttled: object) -> None:
        """One record's stored `finished_at` and `throttled`, as read (Record's rules:
        a time is an int or float, a count an int >= 0, a bool neither)."""
        if type(throttled) is not int or throttled < 0:
            throttled = 0
        if type(finished_at) is not float and type(finished_at) is not int:
            self.untimed += 1
            return
        if not 0 <= finished_at < LATEST:  # nan too
            self.untimed += 1  # a stored time is untrusted: none past LATEST is real
            return
        key = int(finished_at) // self.width
        counts = self._buckets.get(key)
        if counts is None:
            key = self._make_room(key)
            counts = self._buckets.setdefault(key, [0, 0, 0])
        counts[failed] += 1
        counts[2] += throttled

    def _make_room(self, key: int) -> int:
        """Widen the buckets until the span holds `key`; returns its key at the new width."""
        first = key if self._first is None else min(self._first, key)
        last = max(self._last, key)
        while last - first >= MAX_BUCKETS:
            merged: dict[int, list[int]] = {}
            for old, counts in self._buckets.items():
                into = merged.setdefault(old // 2, [0, 0, 0])
                for i, count in enumerate(counts):
                    into[i] += count
            self._buckets, self.width = merged, self.width * 2
            first, last, key = first // 2, last // 2, key // 2
        self._first, self._last = first, last
        return key

    def to_json(self) -> dict[str, Any] | None:
        """{bucket_s, start (epoch s of the first bucket), ok, failed, throttled (one count
        per bucket, empty buckets included), untimed}; None when no record had a time."""
        if self._first is None:
            return None
        keys = range(self._first, self._last + 1)
        empty = (0, 0, 0)
        rows = [self._buckets.get(key, empty) for key in keys]
        return {
            "bucket_s": self.width,
            "start": self._first * self.width,
            "ok": [row[0] for row in rows],
            "failed": [row[1] for row in rows],
            "throttled": [row[2] for row in rows],
            "untimed": self.untimed,
        }
