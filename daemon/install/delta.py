"""A delta rootfs into the inactive slot: chunks the active slot has are copied, the rest
fetched by Range, and the result checked against the signed sha256 as every install is.

Safety rests on three hashes, none of them new to ferry's trust chain:

- the chunk index is a bundle member bound by its sha256 in the signed sw-description
  (the bundle reader checked it before this module sees it);
- every chunk, copied from the active slot or fetched, is hashed (sha256) and compared
  with the index before it reaches the slot writer; a fetched chunk that fails is
  fetched once more, then the install fails; a local chunk that fails (the active slot
  changed under us, a bad block) is fetched instead: the base is never trusted;
- the slot writer checks the whole slot's sha256 against the signed
  ``decompressed-sha256``, exactly as for a full install, and fsyncs.

A download cut short (a power cut, a dropped link, ferryd killed) is not fetched again:
the slot writer writes the image in order, so the inactive slot already holds a prefix
of it. Before fetching, the chunks the active slot lacks are looked for at their own
offsets in the inactive slot, in order, until the first one whose bytes do not hash
right (the end of what was written); those are kept where they are (read back, hashed
again, written back unchanged). On a first install that costs one chunk's read. Like
the active slot, the inactive slot's old bytes are never trusted: only a chunk whose
sha256 is the index's is used, and the whole slot's sha256 is checked at the end.

The active slot is only ever opened read-only. The plan compares what the delta costs
(the missing chunks' stored bytes, in ranges merged across small gaps, plus a request's
overhead each) with the whole rootfs member; when the delta would cost as much or more
(everything changed), the member is fetched whole in one request and decoded the same
way. An identical pair makes no request at all.

Memory: the index (40 bytes a chunk, plus a dict entry for each chunk digest) and one
chunk at a time; never the image. A restart after a power cut plans again from the
active slot and from what the interrupted write left in the inactive slot, so it fetches
only the chunks that never arrived.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from ferry.daemon.install.deltafetch import REQUEST_OVERHEAD, RangeFetcher
from ferry.daemon.install.download import DownloadOptions
from ferry.errors import FerryError
from ferry.packaging.chunker import iter_chunks
from ferry.packaging.chunkindex import ChunkIndex

log = logging.getLogger(__name__)

MERGE_GAP = 4096  # fetch unneeded bytes between two ranges rather than pay a request


class DeltaError(FerryError):
    pass


class ChunkHashMismatch(DeltaError):
    pass


@dataclass
class DeltaPlan:
    """Which chunks come from the network, as ranges of chunk numbers (inclusive)."""

    ranges: list[tuple[int, int]]
    local: dict[int, int]  # chunk number -> offset in the active slot
    fetch_bytes: int
    full: bool  # the whole member in one request: the delta would not pay
    # chunk number -> its own offset in the inactive slot, where an interrupted write
    # already put it (find_in_place)
    in_place: dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.ranges)


@dataclass
class DeltaStats:
    mode: str = "delta"  # "delta" | "full"
    chunks: int = 0
    reused: int = 0
    kept: int = 0  # already in the inactive slot from an interrupted write
    fetched_chunks: int = 0
    refetched: int = 0
    fetched_bytes: int = 0
    requests: int = 0
    planned_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def stored_offsets(index: ChunkIndex) -> array[int]:
    """Offset of each chunk's frame in the rootfs member, and the member's end."""
    offs = array("Q", [0])
    total = 0
    for s in index.stored:
        total += s
        offs.append(total)
    return offs


def index_slot(device: str | Path, index: ChunkIndex, *,
               limit: int | None = None) -> dict[bytes, int]:
    """Offsets in ``device`` of chunks whose sha256 is one the new image needs.

    The device is cut with the index's own parameters, so unchanged chunks come out
    identical even when they moved. Only digests the index names are kept: memory is
    bounded by the new image's chunk count, whatever the slot's size.
    """
    wanted = {index.digest(i) for i in range(index.count)}
    found: dict[bytes, int] = {}
    try:
        fh = open(device, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as err:
        log.warning("cannot read the active slot %s (%s): fetching every chunk", device, err)
        return found
    with fh:
        for offset, data in iter_chunks(cast(BinaryIO, fh), index.params, limit=limit):
            digest = hashlib.sha256(data).digest()
            if digest in wanted and digest not in found:
                found[digest] = offset
    return found


def find_in_place(slot: str | Path, index: ChunkIndex, have: dict[bytes, int]
                  ) -> dict[int, int]:
    """Chunks the active slot lacks that the inactive slot already holds at their own
    offsets: the prefix an interrupted write left, in order, up to the first chunk
    whose bytes there do not hash right. One chunk's read when nothing was written."""
    found: dict[int, int] = {}
    try:
        fd = os.open(slot, os.O_RDONLY)
    except OSError:
        return found
    try:
        offset = 0
        for i in range(index.count):
            length = index.lengths[i]
            digest = index.digest(i)
            if digest not in have:
                data = os.pread(fd, length, offset)
                if len(data) != length or hashlib.sha256(data).digest() != digest:
                    break
                found[i] = offset
            offset += length
    finally:
        os.close(fd)
    return found


def make_plan(index: ChunkIndex, have: dict[bytes, int], *,
              merge_gap: int = MERGE_GAP, overhead: int = REQUEST_OVERHEAD,
              in_place: dict[int, int] | None = None) -> DeltaPlan:
    offs = stored_offsets(index)
    local: dict[int, int] = {}
    kept = in_place or {}
    ranges: list[tuple[int, int]] = []
    for i in range(index.count):
        where = have.get(index.digest(i))
        if where is not None:
            local[i] = where
            continue
        if i in kept:
            continue
        if ranges and offs[i] - offs[ranges[-1][1] + 1] <= merge_gap:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    fetch = sum(offs[b + 1] - offs[a] for a, b in ranges)
    cost = fetch + overhead * len(ranges)
    whole = offs[-1] + overhead
    if ranges and cost >= whole and not kept:
        return DeltaPlan(ranges=[(0, index.count - 1)], local={}, fetch_bytes=offs[-1],
                         full=True)
    return DeltaPlan(ranges=ranges, local=local, fetch_bytes=fetch, full=False,
                     in_place=dict(kept))


class DeltaImage(io.RawIOBase):
    """The new image's bytes in order, assembled chunk by chunk: a stream the slot
    writer consumes like any decompressed image (it checks the whole sha256)."""

    def __init__(self, index: ChunkIndex, plan: DeltaPlan, active: str | Path,
                 fetcher: RangeFetcher, data_start: int, stats: DeltaStats,
                 slot: str | Path | None = None) -> None:
        super().__init__()
        self._index = index
        self._plan = plan
        self._offs = stored_offsets(index)
        self._fetcher = fetcher
        self._base = data_start
        self._stats = stats
        self._active: Any = open(active, "rb", buffering=0) if plan.local else None  # noqa: SIM115
        # the inactive slot, read just ahead of the writer (which writes the same bytes
        # back): chunks an interrupted write already put there
        self._slot: Any = (open(slot, "rb", buffering=0)  # noqa: SIM115
                           if plan.in_place and slot is not None else None)
        self._dctx = zstandard.ZstdDecompressor()
        self._chunks = self._produce()
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        for f in (self._active, self._slot):
            if f is not None:
                f.close()
        super().close()

    # -- chunks ------------------------------------------------------------------
    def _decode(self, i: int, frame: bytes) -> bytes | None:
        length = self._index.lengths[i]
        try:
            data = self._dctx.decompress(frame, max_output_size=length)
        except zstandard.ZstdError:
            return None
        if len(data) != length or hashlib.sha256(data).digest() != self._index.digest(i):
            return None
        return data

    def _refetch(self, i: int) -> bytes:
        """Fetch chunk ``i`` on its own, once more; fail if it is still wrong."""
        self._stats.refetched += 1
        frame = self._fetcher.get(self._base + self._offs[i], self._index.stored[i])
        data = self._decode(i, frame)
        if data is None:
            raise ChunkHashMismatch(
                f"chunk {i} of the delta rootfs fails its sha256 twice (the bundle on the "
                "server is corrupt or was tampered with); nothing was activated")
        return data

    def _local(self, i: int) -> bytes:
        """Chunk ``i`` from where the plan found it: the inactive slot (an interrupted
        write put it there) or the active slot; fetched when its bytes changed since."""
        length = self._index.lengths[i]
        kept = self._plan.in_place.get(i)
        fh, offset, where = ((self._slot, kept, "inactive") if kept is not None
                             else (self._active, self._plan.local[i], "active"))
        data = os.pread(fh.fileno(), length, offset)
        if len(data) == length and hashlib.sha256(data).digest() == self._index.digest(i):
            if kept is not None:
                self._stats.kept += 1
            else:
                self._stats.reused += 1
            return data
        # changed since it was planned: never trust either slot's old bytes
        self._stats.notes.append(f"chunk {i} changed in the {where} slot; fetched")
        self._stats.fetched_chunks += 1
        frame = self._fetcher.get(self._base + self._offs[i], self._index.stored[i])
        return self._decode(i, frame) or self._refetch(i)

    def _fetched(self, first: int, last: int) -> Iterator[tuple[int, bytes]]:
        """(chunk number, frame) for every chunk in ``first``..``last``, in order."""
        pending = bytearray()
        i = first
        pieces = self._fetcher.ranges(self._base + self._offs[first],
                                      self._base + self._offs[last + 1] - 1)
        for piece in pieces:
            pending += piece
            while i <= last and len(pending) >= self._index.stored[i]:
                size = self._index.stored[i]
                yield i, bytes(pending[:size])
                del pending[:size]
                i += 1

    def _produce(self) -> Iterator[bytes]:
        index, plan = self._index, self._plan
        i = 0
        for first, last in plan.ranges:
            while i < first:
                yield self._local(i)
                i += 1
            for n, frame in self._fetched(first, last):
                if n in plan.local or n in plan.in_place:  # a gap merged into the range
                    yield self._local(n)
                else:
                    self._stats.fetched_chunks += 1
                    yield self._decode(n, frame) or self._refetch(n)
                i = n + 1
        while i < index.count:
            yield self._local(i)
            i += 1


def delta_stream(index: ChunkIndex, *, url: str, options: DownloadOptions | None,
                 validator: str | None, data_start: int, active: str | Path,
                 active_limit: int | None = None, have: dict[bytes, int] | None = None,
                 slot: str | Path | None = None,
                 ) -> tuple[DeltaImage, DeltaStats, RangeFetcher]:
    """Plan against the active slot (and ``slot``, the inactive one about to be
    written, for what an interrupted write left there) and return the image stream to
    write; ``have``: the active slot's chunks when known already
    (daemon/install/deltacache.py)."""
    if have is None:
        have = index_slot(active, index, limit=active_limit)
    in_place = find_in_place(slot, index, have) if slot is not None else {}
    plan = make_plan(index, have, in_place=in_place)
    stats = DeltaStats(mode="full" if plan.full else "delta", chunks=index.count,
                       planned_bytes=plan.fetch_bytes)
    log.info("delta rootfs: %d chunks, %d in the active slot, %d already in the slot "
             "being written, fetching %d bytes in %d requests (%s)", index.count,
             len(plan.local), len(plan.in_place), plan.fetch_bytes, plan.requests,
             stats.mode)
    fetcher = RangeFetcher(url, options, validator=validator)
    return (DeltaImage(index, plan, active, fetcher, data_start, stats, slot=slot), stats,
            fetcher)


def finish_stats(stats: DeltaStats, fetcher: RangeFetcher) -> dict[str, Any]:
    stats.fetched_bytes = fetcher.bytes
    stats.requests = fetcher.requests
    return {"mode": stats.mode, "chunks": stats.chunks, "reused": stats.reused,
            "kept": stats.kept,
            "fetched_chunks": stats.fetched_chunks, "refetched": stats.refetched,
            "fetched_bytes": stats.fetched_bytes, "requests": stats.requests,
            "notes": stats.notes[:20]}


ProgressCb = Callable[[int], None]
