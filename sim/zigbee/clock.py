"""A discrete-event clock: time advances only from one scheduled event to the next.

Tests and benchmarks therefore measure simulated seconds, never wall time, and a run
is reproducible from its seed. ``now()`` is on the Zigbee UTC scale (seconds since
2000-01-01) so UTCTime fields in frames look like a real network's.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

START = 800_000_000.0  # 2025-05-08 in Zigbee UTC seconds; any value works


class SimClock:
    def __init__(self, start: float = START) -> None:
        self._now = start
        self.start = start
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.events = 0

    def now(self) -> float:
        return self._now

    def elapsed(self) -> float:
        return self._now - self.start

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self._now + max(0.0, delay), next(self._seq), fn))

    def run(self, *, until: float | None = None, stop: Callable[[], bool] | None = None,
            check_every: int = 1000) -> bool:
        """Run events until ``stop()`` is true (checked every few events), the queue is
        empty, or simulated time passes ``until`` (absolute). Returns stop()'s value."""
        n = 0
        while self._queue:
            t, _, fn = self._queue[0]
            if until is not None and t > until:
                self._now = until
                break
            heapq.heappop(self._queue)
            self._now = t
            fn()
            self.events += 1
            n += 1
            if stop is not None and n % check_every == 0 and stop():
                return True
        return stop() if stop is not None else False
