"""A test-only hook that simulates a power cut at a named point.

The power-cut matrix (tests/system/test_install_powercut.py) runs an install as a
child process with ``FERRY_TEST_KILL_AT=<point>:<n>``; the n-th time the code passes
``killpoint(<point>)`` the process SIGKILLs itself, so no ``finally`` or ``atexit``
runs, exactly as when power goes. Unset (always, in production) it costs one dict
lookup.
"""

from __future__ import annotations

import os
import signal

_spec: tuple[str, int] | None = None
_parsed = False
_counts: dict[str, int] = {}


def _load() -> tuple[str, int] | None:
    global _spec, _parsed
    if not _parsed:
        _parsed = True
        raw = os.environ.get("FERRY_TEST_KILL_AT", "")
        if raw:
            point, _, n = raw.rpartition(":")
            _spec = (point, int(n)) if point and n.isdigit() else (raw, 1)
    return _spec


def killpoint(point: str) -> None:
    log = os.environ.get("FERRY_TEST_KILL_LOG")
    if log:  # the matrix first records which points a clean run passes, and how often
        with open(log, "a") as f:
            f.write(point + "\n")
    spec = _load()
    if spec is None or spec[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)

