"""ferryd's Progress property: throttled on the worker side, never losing an edge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ferry.daemon.service.dbus_object import FerryInterface


class Loop:
    """Stands in for the asyncio loop: runs what a worker hands it, and counts it."""

    def __init__(self) -> None:
        self.calls = 0

    def call_soon_threadsafe(self, fn: Callable[[], Any]) -> None:
        self.calls += 1
        fn()


class Engine:
    def cancellable(self) -> bool:
        return True


def test_per_chunk_progress_becomes_few_signals(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("ferry.daemon.service.dbus_object.time.monotonic", lambda: clock[0])
    loop = Loop()
    iface = FerryInterface(Engine(), loop)  # type: ignore[arg-type]
    progress = iface._progress_fn(1)
    total = 512 << 20
    for done in range(0, total + 1, 512 << 10):  # what the slot writer reports: 1025 calls
        clock[0] += 0.001
        progress("write", done, total)
    # one per 0.1 s of a 1 s write, plus the first and the 100 % one, not 1025
    assert 5 <= loop.calls <= 14
    assert iface.progress == (100, "write", 1)  # the end always gets out


def test_a_new_phase_goes_out_at_once(monkeypatch) -> None:
    monkeypatch.setattr("ferry.daemon.service.dbus_object.time.monotonic", lambda: 5.0)
    loop = Loop()
    iface = FerryInterface(Engine(), loop)  # type: ignore[arg-type]
    progress = iface._progress_fn(1)
    progress("write", 10, 100)
    progress("write", 20, 100)  # same instant: held back
    assert iface.progress == (10, "write", 1)
    progress("activate", 0, 1)  # same instant, new phase: sent
    assert iface.progress == (0, "activate", 1)
    progress("activate", 0, 1)  # nothing new: not sent again
    assert loop.calls == 2
