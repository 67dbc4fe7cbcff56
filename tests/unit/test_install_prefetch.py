"""The download read-ahead (download.Prefetch) steps aside for a consumer that reads ahead
itself: every byte still comes out once and in order, across the hand-over, and a
transport error after it still reaches the consumer."""

from __future__ import annotations

import io
import os
import threading

import pytest

from ferry.daemon.install.download import Prefetch

CHUNK = 64 << 10


class Source(io.RawIOBase):
    """A raw stream that records which threads read it, and can fail at an offset."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self._data, self._pos, self._fail_at = data, 0, fail_at
        self.threads: set[str] = set()

    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def, override]
        self.threads.add(threading.current_thread().name)
        if self._fail_at is not None and self._pos >= self._fail_at:
            raise OSError("connection reset")
        n = min(len(b), len(self._data) - self._pos, 7000)  # short reads, as a socket
        if self._fail_at is not None:
            n = min(n, max(self._fail_at - self._pos, 1))
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def read_all(p: Prefetch, sizes: list[int]) -> bytes:
    out = bytearray()
    i = 0
    while True:
        buf = bytearray(sizes[min(i, len(sizes) - 1)])
        n = p.readinto(memoryview(buf))
        if n == 0:
            return bytes(out)
        out += buf[:n]
        i += 1


def test_small_reads_keep_the_read_ahead_thread() -> None:
    data = os.urandom(5 * CHUNK + 123)
    src = Source(data)
    p = Prefetch(src, chunk=CHUNK)
    assert read_all(p, [1000]) == data
    assert src.threads == {"download"}


def test_big_reads_take_over_after_the_queued_bytes() -> None:
    data = os.urandom(20 * CHUNK + 5)
    src = Source(data)
    p = Prefetch(src, chunk=CHUNK)
    # a header read first, then the slot writer's whole-buffer reads
    assert read_all(p, [100, 3000, CHUNK, CHUNK]) == data
    assert "download" in src.threads
    assert threading.current_thread().name in src.threads  # read directly after the hand-over
    assert not p._thread.is_alive()


def test_an_error_after_the_hand_over_reaches_the_consumer() -> None:
    data = os.urandom(20 * CHUNK)
    p = Prefetch(Source(data, fail_at=10 * CHUNK), chunk=CHUNK)
    got = bytearray()
    with pytest.raises(OSError, match="connection reset"):
        while True:
            buf = bytearray(CHUNK)
            n = p.readinto(memoryview(buf))
            assert n
            got += buf[:n]
    assert bytes(got) == data[:len(got)]
    assert len(got) == 10 * CHUNK
