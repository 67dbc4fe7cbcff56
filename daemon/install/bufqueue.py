"""Filled buffers handed from one thread to another, read back as a stream.

The download read-ahead and the slot writer's read thread both fill pooled buffers in a
thread of their own and queue them as ``(buffer, length)``; the consumer reads them as
a raw stream (the bundle reader, the decompressor) and each buffer goes back to its
pool as soon as its last byte is out, so the producer can fill it again.
"""

from __future__ import annotations

import io
import queue
from collections.abc import Callable

EOF = object()  # queued by the producer after its last buffer


class QueueReader(io.RawIOBase):
    """Items are ``(buffer, n)``, ``EOF``, or an exception the producer hit, raised here
    in order (after the buffers queued before it)."""

    def __init__(self, q: queue.Queue[object], give_back: Callable[[bytearray], None]) -> None:
        super().__init__()
        self._q = q
        self._give_back = give_back
        self._buf: bytearray | None = None
        self._n = 0
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._buf is None:
            if self._eof:
                return 0
            item = self._q.get()
            if item is EOF:
                self._eof = True
                return 0
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            assert isinstance(item, tuple)
            self._buf, self._n = item
            self._pos = 0
        k = min(len(b), self._n - self._pos)
        b[:k] = memoryview(self._buf)[self._pos:self._pos + k]
        self._pos += k
        if self._pos >= self._n:
            self._give_back(self._buf)
            self._buf = None
        return k
