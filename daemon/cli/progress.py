"""A progress display for long work that reads well on an 80-column serial console.

On a tty it redraws one line with ``\\r``; elsewhere (pipes, CI logs, dumb terminals) it
prints a plain line at most every few percent so logs stay short and readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_duration(s: float) -> str:
    s = max(0, int(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """Percent, bytes, rate and ETA for a transfer of known size."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 width: int = 80, unit: str = "bytes") -> None:
        # unit "bytes" shows amounts and rate; "percent" (progress relayed from ferryd,
        # which reports only a percentage) shows the bar, percent and ETA
        self.unit = unit
        self.label = label
        self.total = max(total, 0)
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last_pct = -100
        self._last_draw = 0.0
        self.done = 0

    def update(self, done: int, message: str = "") -> None:
        self.done = done
        now = time.monotonic()
        pct = int(done * 100 / self.total) if self.total else 0
        if self.tty:
            if now - self._last_draw < 0.1 and done < self.total:
                return
            self._last_draw = now
            self.stream.write("\r" + self._line(done, now, message).ljust(self.width - 1)[
                : self.width - 1])
            self.stream.flush()
        elif pct >= self._last_pct + 10 or (done >= self.total and pct != self._last_pct):
            self._last_pct = pct
            self.stream.write(self._line(done, now, message) + "\n")
            self.stream.flush()

    def _line(self, done: int, now: float, message: str) -> str:
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        pct = done * 100 / self.total if self.total else 0.0
        eta = (self.total - done) / rate if rate > 0 and self.total else 0.0
        bar_w = 20
        fill = int(bar_w * pct / 100)
        bar = "#" * fill + "." * (bar_w - fill)
        if self.unit == "percent":
            text = f"{self.label} [{bar}] {pct:5.1f}% ETA {human_duration(eta)}"
        else:
            text = (f"{self.label} [{bar}] {pct:5.1f}% {human_bytes(done)}/"
                    f"{human_bytes(self.total)} {human_bytes(rate)}/s ETA {human_duration(eta)}")
        if message:
            text += f" {message}"
        return text

    def finish(self, final_line: str | None = None) -> None:
        """End the bar: replace it with ``final_line``, or keep it drawn at 100 %."""
        if final_line is None:
            self.done = self.total
            self._last_draw = 0.0
            self._last_pct = -100
            self.update(self.total)
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()
            return
        if self.tty:
            self.stream.write("\r" + " " * (self.width - 1) + "\r")
        self.stream.write(final_line + "\n")
        self.stream.flush()
