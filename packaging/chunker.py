"""Content-defined chunks of an image: the same bytes cut the same way, wherever they sit.

A delta update is only as good as its chunk boundaries: the device cuts its own active
slot with the same rule the build host cut the new image with, and every run of bytes
that did not change must come out as the same chunks on both sides, even when what is
in front of it moved. A package update moves content by whole filesystem blocks (a file
grew, another was added) but also *inside* files by a few bytes (a rebuilt binary, a
changed table), so the boundaries are chosen per byte, from the 8 bytes before each
possible cut, as FastCDC/buzhash chunkers (zchunk, casync) do.

The rule: a cut falls after byte ``p`` (1-based: the chunk is ``[start, p)``) when
``H(p) & mask == C & mask``, where ``H(p)`` is the XOR of ``T[b]`` over the 8 bytes
``b`` before the cut, in two 8-bit planes with tables ``T0``/``T1`` (from SHAKE-256 of a
fixed label, so every machine has the same ones), only at ``min_size <= p - start``, and
at ``max_size`` in any case. ``mask`` has ``log2(avg - min)`` bits, so chunks average
about ``avg`` bytes. A run of one byte value (zeros in free space) XORs to 0, never to
``C``, so it is cut at ``max_size``: a few big chunks, cheap to index and to compress.

Why XOR of table values: it can be computed for every position at once with Python's
big-integer operations (``bytes.translate``, ``int.from_bytes``, shifts, XOR) at C
speed, where a rolling hash in a Python loop costs a step per byte. A gateway indexes a
256 MiB slot in a few seconds without a compiled extension.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

WINDOW = 8  # bytes before a cut that decide it
READ_SIZE = 1 << 20  # bytes read from the image at a time (big-int temporaries: a few x this)
MIN_AVG = 1 << 10
MAX_AVG = 1 << 20

_T0 = hashlib.shake_256(b"ferry chunker T0").digest(256)
_T1 = hashlib.shake_256(b"ferry chunker T1").digest(256)
_C0, _C1 = hashlib.shake_256(b"ferry chunker C").digest(2)


class ChunkParamError(ValueError):
    pass


@dataclass(frozen=True)
class ChunkParams:
    """How an image is cut; the index records ``avg`` so the device cuts the same way."""

    avg: int = 16 << 10  # bytes, a power of two (bench/delta.py measures the choice)

    def __post_init__(self) -> None:
        if not MIN_AVG <= self.avg <= MAX_AVG or self.avg & (self.avg - 1):
            raise ChunkParamError(
                f"average chunk of {self.avg} bytes: must be a power of two, "
                f"{MIN_AVG}..{MAX_AVG}")

    @property
    def min_size(self) -> int:
        return self.avg // 4

    @property
    def max_size(self) -> int:
        return self.avg * 4

    @property
    def bits(self) -> int:
        return max(1, (self.avg - self.min_size).bit_length() - 1)

    @property
    def max_chunk(self) -> int:
        return self.max_size


def _mask_tables(bits: int) -> tuple[bytes, bytes]:
    """Byte maps that send a plane value to 0 exactly when its masked bits equal C's."""
    m0 = (1 << min(bits, 8)) - 1
    m1 = (1 << max(0, bits - 8)) - 1
    return (bytes(((v ^ _C0) & m0) for v in range(256)),
            bytes(((v ^ _C1) & m1) for v in range(256)))


def candidates(data: bytes | bytearray, params: ChunkParams) -> bytes:
    """``out[j] == 0`` iff a cut after ``data[j + WINDOW - 1]`` satisfies the rule
    (length ``len(data) - WINDOW + 1``); the size limits are the caller's."""
    n = len(data) - WINDOW + 1
    if n <= 0:
        return b""
    planes = []
    for table in (_T0, _T1):
        x = int.from_bytes(bytes(data).translate(table), "little")
        x ^= x >> 8  # XOR over a window of 2, 4, then 8 bytes
        x ^= x >> 16
        x ^= x >> 32
        planes.append(x)
    m0, m1 = _mask_tables(params.bits)
    # byte j of a plane is the XOR over data[j:j + 8]: a cut after data[j + 7]
    low = planes[0].to_bytes(len(data), "little")[:n].translate(m0)
    if params.bits <= 8:
        return low
    high = planes[1].to_bytes(len(data), "little")[:n].translate(m1)
    both = int.from_bytes(low, "little") | int.from_bytes(high, "little")
    return both.to_bytes(n, "little")


def _cuts(data: bytes | bytearray, params: ChunkParams, final: bool) -> Iterator[int]:
    """Cut positions in ``data`` (which starts at a chunk start); without ``final`` the
    bytes after the last cut are left for the next call."""
    cand = candidates(data, params)
    lo, hi = params.min_size, params.max_size
    start = 0
    size = len(data)
    while True:
        first = start + lo - WINDOW  # candidate index of a cut at start + lo
        j = cand.find(b"\0", max(first, 0), max(first, 0) + hi - lo + 1) if \
            start + lo <= size else -1
        if j >= 0 and j + WINDOW <= start + hi:
            cut = j + WINDOW
        elif start + hi <= size:
            cut = start + hi
        else:
            if final and start < size:
                yield size
            return
        yield cut
        start = cut


def iter_chunks(fh: BinaryIO, params: ChunkParams, *,
                limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of each chunk of ``fh`` from its current position to its end (or
    ``limit`` bytes); the last chunk may be shorter than ``min_size``."""
    pending = b""
    start = 0  # image offset of pending[0]
    left = limit
    eof = False
    while not eof:
        want = READ_SIZE if left is None else min(READ_SIZE, left)
        data = fh.read(want) if want else b""
        if left is not None:
            left -= len(data)
        eof = not data or (left is not None and left <= 0)
        pending += data
        if not eof and len(pending) < params.max_size * 2:
            continue
        prev = 0
        for cut in _cuts(pending, params, final=eof):
            yield start + prev, pending[prev:cut]
            prev = cut
        pending = pending[prev:]
        start += prev
