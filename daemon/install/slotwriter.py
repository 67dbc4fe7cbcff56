"""Stream one image into a slot: (download ->) decompress -> sha256 -> write, then fsync.

No temporary copy and nothing image-sized in memory: a fixed pool of buffers (1 MiB
for a stored image, 512 KiB otherwise) circulates between three threads, so the
network/verification read, decompression plus hashing, and the write to the slot
overlap (hashlib, zstandard and os.write all release the GIL on large buffers). Peak
memory is the pool, whatever the image size.

The slot must already be marked unbootable by the caller; this module only promises
that it returns normally iff every byte arrived, matched its hash and is on stable
storage. ``before_open`` runs before the slot is opened for writing, ahead of the first
byte: the pipeline drops the slot's verified record there (boot/slotrecord), so a slot
whose content is changing never has one, whatever stops the write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ferry.daemon.install.bufqueue import EOF, QueueReader
from ferry.daemon.testhooks.killpoint import killpoint
from ferry.errors import FerryError

CHUNK = 512 << 10
# A stored image's buffers go from the socket to the slot untouched (an encrypted one's
# through AES-CBC, byte for byte), at the highest byte rate of any image, so the Python
# around each buffer (three queue hand-overs, the progress call) costs most there:
# 1 MiB halves it. Seven A/B pairs of 1 GiB installs each (issue 22): raw CPU 1.41 vs
# 1.51 s, encrypted 1.70 vs 1.85 s, wall 6-9 % less, for +2 MiB (raw) and +3.5 MiB
# (encrypted) peak RSS. A compressed image keeps 512 KiB: the decompressor's window
# already costs several MiB, and that install's peak is the one to keep down.
STORED_CHUNK = 1 << 20
POOL = 4
SYNC_EVERY = 32 << 20  # fsync this often: early writeback, and resume points (on_synced)


class SlotWriteError(FerryError):
    pass


class SlotTooSmall(SlotWriteError):
    pass


class SlotHashMismatch(SlotWriteError):
    pass


@dataclass(frozen=True)
class WriteResult:
    size: int
    sha256: str | None  # of the bytes written, when it was asked for


def slot_capacity(device: str | Path) -> int | None:
    """Bytes the slot can hold: a block device's size, a regular file's current length.

    A missing or empty regular file has no known capacity (None): a slot file in a test
    or the simulator is usually pre-sized with truncate, like a partition.
    """
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return None
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(device, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    return st.st_size or None


def _readinto(src: BinaryIO, view: memoryview) -> int:
    ri = getattr(src, "readinto", None)
    if ri is not None:
        n = ri(view)
        return int(n or 0)
    data = src.read(len(view))
    view[: len(data)] = data
    return len(data)


def _fill(src: BinaryIO, buf: bytearray) -> int:
    """Fill buf as far as the stream allows (short reads are normal on sockets)."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = _readinto(src, view[got:])
        if n == 0:
            break
        got += n
    return got


def write_slot(
    src: BinaryIO,
    device: str | Path,
    *,
    compressed: str | None = None,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    capacity: int | None = None,
    progress: Callable[[int], None] | None = None,
    decompress: Callable[[str | None, BinaryIO], BinaryIO] | None = None,
    on_synced: Callable[[int, int], None] | None = None,
    start: int = 0,
    before_open: Callable[[], None] | None = None,
    digest: bool = False,
) -> WriteResult:
    """Write the (decompressed) image from ``src`` to the start of ``device``.

    ``expected_size``/``expected_sha256`` describe the bytes that land in the slot; the
    stored bytes are checked by the stream itself (BundleReader raises at EOF).

    ``on_synced(stored, slot)``: after an fsync, the newest place to resume from: the
    first ``slot`` bytes of the slot are durable and ``src`` can continue at its byte
    ``stored`` (for a stored image both are the same; for zstd, a frame boundary).

    ``start``: resume an earlier write: the slot's first ``start`` bytes are already
    there and ``src`` begins where they end (a frame start). They are read back into
    the sha256, so a prefix that did not survive shows up as a hash mismatch.

    ``before_open()``: called once, before the slot is opened for writing.
    ``digest``: return the sha256 of the bytes written even without ``expected_sha256``
    (a compressed image whose signed description has no decompressed-sha256: the
    stored stream is verified, and this digest of its output is what a later re-hash
    compares against).

    ``decompress(compressed, stored)``: builds the stream of slot bytes on the stored
    stream instead of ``decompress_stream``; given, it is used even when ``compressed``
    is None (an encrypted image: packaging.encryption.open_plaintext).
    """
    transformed = compressed is not None or decompress is not None
    if capacity is None:
        capacity = slot_capacity(device)
    if capacity is not None and expected_size is not None and expected_size > capacity:
        raise SlotTooSmall(
            f"image needs {expected_size} bytes but slot {device} holds {capacity}; "
            "build a smaller image or enlarge the slot"
        )
    # Two pools: the producer's input buffers and, when decompressing, the output
    # buffers. With one shared pool the producer could hold every buffer in raw_q
    # while the decompressor waits for an output buffer: a deadlock.
    # Compressed input arrives at a fraction of the output rate, so it gets fewer
    # buffers: the decompressor's window already costs several MiB.
    pool: queue.Queue[bytearray] = queue.Queue()
    size = CHUNK if compressed is not None else STORED_CHUNK
    for _ in range(POOL if compressed is None else 2):  # an encrypted image: ~1:1
        pool.put(bytearray(size))
    out_pool: queue.Queue[bytearray] = pool
    if transformed:
        out_pool = queue.Queue()
        for _ in range(POOL - 1):
            out_pool.put(bytearray(size))
    stop = threading.Event()
    raw_q: queue.Queue[object] = queue.Queue()
    write_q: queue.Queue[object] = queue.Queue()
    errors: list[BaseException] = []

    def take(p: queue.Queue[bytearray] = pool) -> bytearray | None:
        while not stop.is_set():
            try:
                return p.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def next_raw() -> object:
        while not stop.is_set():
            try:
                return raw_q.get(timeout=0.2)
            except queue.Empty:
                continue
        return EOF

    def producer() -> None:
        try:
            while not stop.is_set():
                buf = take()
                if buf is None:
                    break
                n = _fill(src, buf)
                if n == 0:
                    pool.put(buf)
                    break
                raw_q.put((buf, n))
            raw_q.put(EOF)
        except BaseException as exc:
            raw_q.put(exc)

    if before_open is not None:
        before_open()
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(device, flags | (0 if os.path.exists(device) else os.O_CREAT), 0o600)
    except OSError as exc:
        raise SlotWriteError(f"cannot open slot {device}: {exc.strerror}") from exc

    written = start
    next_sync = start + SYNC_EVERY
    # (stored, slot) places a later process could resume from, oldest first; the
    # syncer reports the newest one its fsync covered
    marks: list[tuple[int, int]] = []
    marks_lock = threading.Lock()
    # fsync every SYNC_EVERY bytes in a thread of its own, so the writer never waits
    # for it. It starts the writeback early (otherwise the kernel holds the dirty pages
    # until the final fsync, which then writes all of them while nothing else runs:
    # measured 0.29-0.33 s instead of 0.34-0.47 s for 256 MiB over HTTP), and what was
    # written before an fsync started is durable when it returns: a resume point.
    sync_req: queue.Queue[int | None] = queue.Queue()

    def syncer() -> None:
        while (upto := sync_req.get()) is not None:
            while True:  # only the newest request matters
                try:
                    nxt = sync_req.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    return
                upto = nxt
            try:
                os.fsync(fd)
            except OSError:
                return  # the final fsync reports it
            if on_synced is None:
                continue
            if not transformed:
                point: tuple[int, int] | None = (upto - start, upto)
            else:
                with marks_lock:
                    done = [m for m in marks if m[1] <= upto]
                    del marks[:len(done)]
                point = done[-1] if done else None
            if point is not None:
                on_synced(*point)
                killpoint("slot.synced")

    t_sync = threading.Thread(target=syncer, name="slot-sync", daemon=True)
    t_sync.start()

    def writer() -> None:
        nonlocal written, next_sync
        try:
            while True:
                item = write_q.get()
                if item is EOF:
                    return
                assert isinstance(item, tuple)
                buf, n = item
                view = memoryview(buf)[:n]
                off = 0
                while off < n:
                    off += os.pwrite(fd, view[off:], written + off)
                written += n
                out_pool.put(buf)
                if written >= next_sync:
                    next_sync = written + SYNC_EVERY
                    sync_req.put(written)
                killpoint("slot.write")
                if progress is not None:
                    progress(written)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            while True:  # drain so the main thread never blocks on a full pool
                item = write_q.get()
                if item is EOF:
                    return
                if isinstance(item, tuple):
                    out_pool.put(item[0])

    hasher = hashlib.sha256() if expected_sha256 or digest else None
    t_prod = threading.Thread(target=producer, name="slot-read", daemon=True)
    t_write = threading.Thread(target=writer, name="slot-write", daemon=True)
    t_prod.start()
    t_write.start()
    total = start
    try:
        if hasher is not None and start:
            _hash_prefix(device, start, hasher)
        stream: BinaryIO | None = None
        if transformed:
            from ferry.packaging.compression import decompress_stream

            queued = QueueReader(raw_q, pool.put)
            if decompress is not None:
                stream = decompress(compressed, queued)  # type: ignore[arg-type]
            else:
                def frame_end(stored: int, produced: int) -> None:
                    with marks_lock:
                        marks.append((stored, start + produced))

                stream = decompress_stream(compressed, queued,  # type: ignore[arg-type]
                                           on_frame=frame_end if on_synced else None)
        while not stop.is_set():
            if stream is None:
                # stored image: the producer's buffers go straight to the writer
                item = next_raw()
                if item is EOF:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, tuple)
                buf, n = item
            else:
                got = take(out_pool)
                if got is None:
                    break
                buf = got
                n = _fill(stream, buf)
                if n == 0:
                    out_pool.put(buf)
                    break
            total += n
            if capacity is not None and total > capacity:
                out_pool.put(buf)
                raise SlotTooSmall(
                    f"image is larger than slot {device} ({capacity} bytes); "
                    "build a smaller image or enlarge the slot")
            if hasher is not None:
                hasher.update(memoryview(buf)[:n])
            write_q.put((buf, n))
    except BaseException:
        stop.set()
        raise
    finally:
        write_q.put(EOF)
        t_write.join()
        sync_req.put(None)
        t_sync.join()
        if stop.is_set():
            _drain(raw_q, pool)
        t_prod.join(timeout=30)
        try:
            if not errors and not stop.is_set():
                killpoint("slot.fsync")
                os.fsync(fd)
        except OSError as exc:
            errors.append(exc)
        finally:
            os.close(fd)
    if errors:
        first = errors[0]
        if isinstance(first, OSError):
            what = {errno.ENOSPC: "no space left", errno.EFBIG: "file size limit reached",
                    errno.EIO: "I/O error"}.get(first.errno or 0, first.strerror or str(first))
            raise SlotWriteError(f"writing slot {device} failed at byte {written}: {what}") \
                from first
        raise first
    if expected_size is not None and total != expected_size:
        raise SlotWriteError(
            f"image produced {total} bytes, sw-description says {expected_size}; "
            "the bundle is inconsistent, rebuild it")
    actual = hasher.hexdigest() if hasher else None
    if expected_sha256 and actual != expected_sha256.lower():
        raise SlotHashMismatch(
            f"slot {device} content sha256 {actual} does not match {expected_sha256}; "
            "the slot stays unbootable")
    return WriteResult(size=total, sha256=actual)


def _hash_prefix(device: str | Path, n: int, hasher: hashlib._Hash) -> None:
    """Feed the slot's first ``n`` bytes (an earlier, resumed write) to ``hasher``."""
    with open(device, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        left = n
        while left:
            got = f.readinto(view[: min(CHUNK, left)])
            if not got:
                raise SlotWriteError(f"slot {device} is shorter than the {n} bytes an "
                                     "earlier write left; cannot resume")
            hasher.update(view[:got])
            left -= got


def _drain(q: queue.Queue[object], pool: queue.Queue[bytearray]) -> None:
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, tuple):
            pool.put(item[0])
