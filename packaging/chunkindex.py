"""The chunk index of a delta rootfs: which chunks, in what order, how long, which hash.

The index is one bundle member (docs/bundle-format.md, "Delta images"), bound to the
signed sw-description by its sha256 like every image, so a truncated, reordered or
edited index is refused before a byte of it is used. Its content is still parsed as if
it were hostile (a build host bug, a key in the wrong hands cannot make the device
allocate or loop without bound): every count and length is checked against the others
and against the rootfs entry it belongs to, and anything off is one ``BadChunkIndex``
line.

Layout, zstd-compressed as a whole (the lengths compress, the hashes do not):

    header  8s magic "FERRYCI1" | u32 window (8) | u32 average chunk size in bytes
            | u64 image size | u32 chunk count                          (little endian)
    entry   u32 length | u32 stored length | 32s sha256 of the chunk's bytes

The chunks' stored bytes follow each other in the rootfs member in index order, each
one zstd frame, so offsets are implicit: nothing in the index can point outside the
member or make two chunks overlap.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from dataclasses import dataclass

import zstandard

from ferry.packaging.chunker import WINDOW, ChunkParamError, ChunkParams
from ferry.packaging.errors import BundleError

MAGIC = b"FERRYCI1"
_HEADER = struct.Struct("<8sIIQI")
_ENTRY = struct.Struct("<II32s")
MAX_CHUNKS = 1 << 22  # 4 Mi chunks: a 4 GiB image in 1 KiB chunks; the index <= 160 MiB
# zstd never stores a frame of n bytes in more than n plus a small bound; a chunk's
# stored length above this is not a zstd frame of that chunk
_FRAME_SLACK = 1024


class BadChunkIndex(BundleError):
    """A delta image's chunk index that cannot be what the signed entry describes."""


@dataclass(frozen=True)
class ChunkIndex:
    params: ChunkParams
    image_size: int
    lengths: array[int]  # u32 per chunk: bytes in the image
    stored: array[int]  # u32 per chunk: bytes of its zstd frame
    digests: bytes  # 32 bytes per chunk

    @property
    def count(self) -> int:
        return len(self.lengths)

    def digest(self, i: int) -> bytes:
        return self.digests[32 * i:32 * i + 32]

    @property
    def stored_size(self) -> int:
        return sum(self.stored)


def encode_index(params: ChunkParams, image_size: int,
                 entries: list[tuple[int, int, bytes]]) -> bytes:
    """The stored member for ``entries`` (length, stored length, sha256 digest)."""
    raw = bytearray(_HEADER.pack(MAGIC, WINDOW, params.avg, image_size, len(entries)))
    for length, stored, digest in entries:
        raw += _ENTRY.pack(length, stored, digest)
    return zstandard.ZstdCompressor(level=19, write_checksum=True).compress(bytes(raw))


def parse_index(data: bytes, *, what: str = "chunk index",
                stored_size: int | None = None,
                image_size: int | None = None) -> ChunkIndex:
    """Parse a stored index; ``stored_size``/``image_size`` are what the signed rootfs
    entry says (the member's size, decompressed-size) and the index must agree."""
    try:
        params_dec = zstandard.ZstdDecompressor()
        raw = params_dec.decompress(data, max_output_size=_HEADER.size
                                    + MAX_CHUNKS * _ENTRY.size)
    except zstandard.ZstdError as err:
        reason = str(err).splitlines()[0][:80] if str(err) else "corrupt"
        raise BadChunkIndex(f"{what}: not a zstd frame ({reason})") from None
    if len(raw) < _HEADER.size:
        raise BadChunkIndex(f"{what}: {len(raw)} bytes, shorter than its header")
    magic, window, avg, size, count = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise BadChunkIndex(f"{what}: wrong magic (not a ferry chunk index)")
    if window != WINDOW:
        raise BadChunkIndex(f"{what}: chunker window {window}; ferry cuts with {WINDOW}")
    try:
        params = ChunkParams(avg=avg)
    except ChunkParamError as err:
        raise BadChunkIndex(f"{what}: {err}") from None
    if count > MAX_CHUNKS:
        raise BadChunkIndex(f"{what}: {count} chunks, over the limit of {MAX_CHUNKS}")
    if len(raw) != _HEADER.size + count * _ENTRY.size:
        raise BadChunkIndex(
            f"{what}: {len(raw)} bytes for {count} chunks (expected "
            f"{_HEADER.size + count * _ENTRY.size})")
    if image_size is not None and size != image_size:
        raise BadChunkIndex(f"{what}: image of {size} bytes, the rootfs entry says {image_size}")
    lengths = array("I")
    stored = array("I")
    digests = bytearray()
    total = 0
    total_stored = 0
    for i, (length, slen, digest) in enumerate(_ENTRY.iter_unpack(
            memoryview(raw)[_HEADER.size:])):
        if length == 0 or length > params.max_chunk:
            raise BadChunkIndex(f"{what}: chunk {i} is {length} bytes; chunks are "
                                f"1..{params.max_chunk}")
        if slen == 0 or slen > length + _FRAME_SLACK:
            raise BadChunkIndex(f"{what}: chunk {i} is stored in {slen} bytes for {length}")
        total += length
        total_stored += slen
        lengths.append(length)
        stored.append(slen)
        digests += digest
    if total != size:
        raise BadChunkIndex(f"{what}: chunks add up to {total} bytes, the image is {size}")
    if stored_size is not None and total_stored != stored_size:
        raise BadChunkIndex(f"{what}: chunks are stored in {total_stored} bytes, the rootfs "
                            f"member is {stored_size}")
    return ChunkIndex(params=params, image_size=size, lengths=lengths, stored=stored,
                      digests=bytes(digests))


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()
