"""Ctrl-C and SIGTERM during a run: the first stops dispatching and gives the requests
in flight a grace period; a second one, or the end of the grace period, cancels them."""

from __future__ import annotations

import signal
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

__all__ = ["Shutdown"]


class Shutdown:
    """Watches for signals in the run's own task group and says what it does."""

    def __init__(
        self,
        grace_period: float,
        *,
        in_flight: Callable[[], int],
        stop_sending: Callable[[], None],
        cancel_in_flight: Callable[[], None],
        say: Callable[[str], None],
    ) -> None:
        self.grace_period = grace_period
        self.interrupted = False
        self._in_flight = in_flight
        self._stop_sending = stop_sending
        self._cancel_in_flight = cancel_in_flight
        self._say = say

    async def watch(self, side: TaskGroup) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
            signals = receiver.__enter__()
        except (ValueError, RuntimeError, NotImplementedError):
            return  # not the main thread: the embedding program owns signals
        try:
            async for _ in signals:
                if self.interrupted:
                    self._say(f"stopping now: {self._in_flight()} in flight, cancelled")
                    self._cancel_in_flight()
                    continue
                self.interrupted = True
                self._stop_sending()
                self._say(self._notice())
                side.start_soon(self._expire_grace)
        finally:
            receiver.__exit__(None, None, None)

    def _notice(self) -> str:
        in_flight = self._in_flight()
        if not in_flight:
            return "stopping: no request in flight"
        requests = "request" if in_flight == 1 else "requests"
        return (
            f"finishing {in_flight} in-flight {requests} (up to {self.grace_period:g} s); "
            "Ctrl-C again to stop now"
        )

    async def _expire_grace(self) -> None:
        await anyio.sleep(self.grace_period)
        if in_flight := self._in_flight():
            self._say(f"grace period over: {in_flight} in flight, cancelled")
        self._cancel_in_flight()
