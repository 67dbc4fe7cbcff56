"""Content-defined chunks of a filesystem image, with boundaries on its 4 KiB blocks.

A delta update is only as good as its chunk boundaries: the device cuts its own active
slot with the same rule the build host cut the new image with, and every chunk whose
bytes did not change must come out identical on both sides, even when what is in front
of it moved. Byte-level CDC (FastCDC, buzhash: zchunk, casync) finds such boundaries
anywhere in a stream. A filesystem image is not a stream of bytes, though: ext4 (and
squashfs with its block padding, and every other block filesystem) stores a file's data
in whole blocks, so a file that moved, grew or shrank shifts what follows by whole
blocks. So ferry cuts only between 4 KiB blocks and decides from the content of the
block alone: a chunk ends after a block whose CRC-32 is 0 modulo ``spread`` once the
chunk is at least ``min_blocks`` long, and at ``max_blocks`` in any case.

Why that wins on images (measured in bench/delta.py): a chunk never straddles the end
of one file and the start of the next at a byte offset that a shift would change, and
a boundary never falls inside a block, so a changed block costs whole blocks of its own
chunk and nothing of its neighbours'. The decision costs one CRC-32 per 4 KiB (C code)
instead of a Python step per byte, which is what lets a gateway index its active slot
in about the time it takes to read it.

Deterministic by construction: the same bytes and the same parameters give the same
chunks on every machine and Python version (zlib's CRC-32 is fixed by its polynomial).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 4096
READ_SIZE = 4 << 20  # bytes read from the image at a time
MAX_AVG_BLOCKS = 1024  # 4 MiB chunks on average: coarser than any useful delta


class ChunkParamError(ValueError):
    pass


@dataclass(frozen=True)
class ChunkParams:
    """How an image is cut; recorded in the index so the device cuts the same way."""

    avg_blocks: int = 8  # 32 KiB on average (bench/delta.py picks it)
    block: int = BLOCK

    def __post_init__(self) -> None:
        if self.block != BLOCK:
            raise ChunkParamError(f"chunk block size {self.block}: ferry cuts at {BLOCK}")
        if not 1 <= self.avg_blocks <= MAX_AVG_BLOCKS:
            raise ChunkParamError(
                f"average chunk of {self.avg_blocks} blocks: must be 1..{MAX_AVG_BLOCKS}")

    @property
    def min_blocks(self) -> int:
        return max(1, self.avg_blocks // 4)

    @property
    def max_blocks(self) -> int:
        return self.avg_blocks * 4

    @property
    def spread(self) -> int:
        # past min_blocks a boundary comes with probability 1/spread per block, so the
        # mean length is about min_blocks + spread = avg_blocks
        return max(1, self.avg_blocks - self.min_blocks)

    @property
    def max_chunk(self) -> int:
        return self.max_blocks * self.block


def boundaries(data: bytes | bytearray | memoryview, params: ChunkParams,
               run: int = 0) -> Iterator[int]:
    """Chunk ends (byte offsets into ``data``, block aligned) for data that starts at a
    block boundary ``run`` blocks into the current chunk; the caller keeps the rest."""
    view = memoryview(data)
    lo, hi, spread = params.min_blocks, params.max_blocks, params.spread
    block = params.block
    crc32 = zlib.crc32
    full = len(view) - len(view) % block
    for off in range(0, full, block):
        run += 1
        if run >= hi or (run >= lo and crc32(view[off:off + block]) % spread == 0):
            run = 0
            yield off + block


def iter_chunks(fh: BinaryIO, params: ChunkParams, *,
                limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of each chunk of ``fh`` read from its current position to its end
    (or ``limit`` bytes); the last chunk may be shorter and not block aligned."""
    pending = bytearray()
    start = 0  # image offset of pending[0]
    left = limit
    while True:
        want = READ_SIZE if left is None else min(READ_SIZE, left)
        data = fh.read(want) if want else b""
        if left is not None:
            left -= len(data)
        if not data:
            break
        pending += data
        usable = len(pending) - len(pending) % params.block
        if usable < params.max_chunk and len(data) == want and (left is None or left > 0):
            continue  # read on: a boundary may need up to max_blocks of look-ahead
        prev = 0
        for end in boundaries(memoryview(pending)[:usable], params):
            yield start + prev, bytes(pending[prev:end])
            prev = end
        del pending[:prev]
        start += prev
    prev = 0
    # what is left: fewer than max_blocks full blocks plus a partial block
    for end in boundaries(pending, params):
        yield start + prev, bytes(pending[prev:end])
        prev = end
    if prev < len(pending):
        yield start + prev, bytes(pending[prev:])
