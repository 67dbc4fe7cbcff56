"""Where each zstd frame of a stream ends, without decompressing (RFC 8878, section 3.1).

A zstd stream may be several frames one after the other, and a frame can be decoded
without anything before it. ferry writes a bundle's images as frames of 32 MiB each,
so an install cut by a power loss can resume at the last frame boundary that reached
the slot, with a Range request for the rest, instead of downloading the whole image
again. Finding the boundaries needs only the frame and block headers, which this module
walks as the bytes pass through; the decompressor then gets one frame at a time and
can never read past a boundary.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from ferry.packaging.errors import BundleError

MAGIC = 0xFD2FB528
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE = 0x184D2A50
BLOCK_MAX = 128 << 10  # Block_Maximum_Size


class FrameError(BundleError):
    pass


class FrameSplitter:
    """Cuts a zstd byte stream into frames: ``next_frame()`` gives a stream over exactly
    one frame's bytes (skippable frames included), None at the end of the input.

    ``consumed`` counts the input bytes handed out so far; after a frame has been read
    to its end it is that frame's end offset, the place a later reader may start from.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.consumed = 0
        self._current: _Frame | None = None

    def _read(self, n: int, what: str, *, eof_ok: bool = False) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self._raw.read(n - len(out))
            if not chunk:
                if eof_ok and not out:
                    return b""
                raise FrameError(f"zstd stream ends inside {what} at byte "
                                 f"{self.consumed + len(out)}; the image is truncated")
            out += chunk
        self.consumed += n
        return bytes(out)

    def _readinto(self, view: memoryview) -> int:
        ri = getattr(self._raw, "readinto", None)
        if ri is not None:
            got = int(ri(view) or 0)
        else:
            data = self._raw.read(len(view))
            got = len(data)
            view[:got] = data
        if not got:
            raise FrameError(f"zstd stream ends inside a block at byte {self.consumed}; "
                             "the image is truncated")
        self.consumed += got
        return got

    def next_frame(self) -> BinaryIO | None:
        if self._current is not None and not self._current.done:
            raise FrameError("the previous zstd frame was not read to its end")
        first = self._read(4, "a frame magic", eof_ok=True)
        if not first:
            return None
        magic = int.from_bytes(first, "little")
        if magic & SKIPPABLE_MASK == SKIPPABLE:
            size = self._read(4, "a skippable frame header")
            frame = _Frame(self, first + size, checksum=False)
            frame.skip(int.from_bytes(size, "little"))
        elif magic == MAGIC:
            desc = self._read(1, "a frame header")
            d = desc[0]
            if d & 0x08:
                raise FrameError("zstd frame header has its reserved bit set; corrupt image")
            single = (d >> 5) & 1
            fields = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + \
                (1 if single else 0, 2, 4, 8)[d >> 6]  # window, dictionary id, content size
            frame = _Frame(self, first + desc + self._read(fields, "a frame header"),
                           checksum=bool(d & 0x04))
        else:
            # The message names the offset, never the bytes: they are payload.
            raise FrameError(f"no zstd frame magic at byte {self.consumed - 4}; "
                             "the image is not zstd or is corrupt")
        self._current = frame
        return frame  # type: ignore[return-value]

    def block_header(self) -> tuple[bytes, int, bool]:
        """(raw header, content bytes that follow, last block?)"""
        raw = self._read(3, "a block header")
        value = int.from_bytes(raw, "little")
        last, kind, size = bool(value & 1), (value >> 1) & 3, value >> 3
        if kind == 3:
            raise FrameError("zstd block of the reserved type; corrupt image")
        if size > BLOCK_MAX:
            raise FrameError(f"zstd block of {size} bytes, over the 128 KiB maximum")
        return raw, (1 if kind == 1 else size), last  # an RLE block stores one byte


class _Frame(io.RawIOBase):
    """One frame's bytes: headers as they are read, then block contents up to its end."""

    def __init__(self, splitter: FrameSplitter, header: bytes, *, checksum: bool) -> None:
        super().__init__()
        self._s = splitter
        self._pending = bytearray(header)  # header bytes read but not handed out yet
        self._left = 0  # content bytes of the current block (or of a skippable frame)
        self._checksum = checksum
        self._last = False
        self.done = False

    def skip(self, n: int) -> None:
        """A skippable frame: n bytes of user data, no blocks."""
        self._left = n
        self._last = True

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill ``b`` across block boundaries, up to the frame's end.

        The decoder asks for 256 KiB at a time and a block holds at most 128 KiB, so
        one call hands over several headers and contents. Returning at each boundary
        instead cost three calls per block through the Python layers below, about an
        eighth of a zstd install's CPU (py-spy, issue 22).
        """
        view = memoryview(b).cast("B")
        total, want = 0, len(view)
        while total < want:
            if self._pending:
                n = min(want - total, len(self._pending))
                view[total:total + n] = self._pending[:n]
                del self._pending[:n]
                total += n
            elif self._left:
                got = self._s._readinto(view[total:total + min(want - total, self._left)])
                self._left -= got
                total += got
            elif self.done:
                break
            else:
                self._advance()
        return total

    def _advance(self) -> None:
        """The current block is out: read the next block header, or end the frame."""
        if self._last:
            if self._checksum:
                self._checksum = False
                self._pending += self._s._read(4, "a frame checksum")
            else:
                self.done = True
            return
        raw, size, last = self._s.block_header()
        self._pending += raw
        self._left = size
        self._last = last
