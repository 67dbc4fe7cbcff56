"""Streaming (de)compression of bundle images: zstd, gzip (SWUpdate calls it "zlib"), none.

Everything here works chunk by chunk on file-like objects, so an image of any size passes
through in bounded memory and without seeking.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, cast

import zstandard

from ferry.packaging.errors import BundleError, OverLimit
from ferry.packaging.zstdframes import FrameError, FrameSplitter

CHUNK = 1 << 20
# what the zstd reader asks of the bundle stream per call; small, it is held per install
READ_SIZE = 256 << 10
MAX_WINDOW_LOG = 21  # zstd windows of bundles ferry writes: 2 MiB
FRAME_SIZE = 32 << 20  # input bytes per zstd frame ferry writes: resume points
# The CLI says gzip (what the file is); sw-description says zlib (SWUpdate's name for it).
CLI_TO_DESCRIPTION = {"zstd": "zstd", "gzip": "zlib", "none": None}


class DecompressError(BundleError):
    """An image's compressed data is corrupt."""


class DecompressedOverLimit(OverLimit):
    """An image decompresses to more bytes than its cap (a zstd/gzip bomb, or a lie about
    ``decompressed-size``): refused before the excess reaches the disk."""


class _Capped(io.RawIOBase):
    """At most ``limit`` bytes of ``inner``; the first byte past it raises.

    It asks ``inner`` for one byte more than the room left, so an image of exactly
    ``limit`` bytes passes and one byte more is caught on the read that carries it.
    Like ImageStream, a ``readinto`` that raises may have written into the caller's
    buffer: the caller must not use the buffer after an exception.
    """

    def __init__(self, inner: BinaryIO, limit: int, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self._what = what
        self.produced = 0

    def readable(self) -> bool:
        return True

    def _count(self, n: int) -> int:
        self.produced += n
        if self.produced > self._limit:
            raise DecompressedOverLimit(
                f"{self._what} decompresses to more than {self._limit} bytes; refusing it "
                "(a corrupt or hostile image, or a decompressed-size that is wrong)"
            )
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = self._inner.read(min(size, self._limit - self.produced + 1))
        self._count(len(data))
        return data

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        view = view[: self._limit - self.produced + 1]
        ri = getattr(self._inner, "readinto", None)
        if ri is None:
            data = self._inner.read(len(view))
            view[: len(data)] = data
            return self._count(len(data))
        return self._count(int(ri(view) or 0))

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)


def output_limit(declared: int | None, cap: int | None) -> int | None:
    """The most bytes one image may decompress to: what its signed ``decompressed-size``
    declares when it declares one (so it cannot produce more than it promised), else the
    configured ``cap`` (``Limits.max_decompressed_size``; None or 0: no cap). A declared
    size over the cap is refused at once, before a byte is written."""
    cap = cap or None
    if declared is None:
        return cap
    if cap is not None and declared > cap:
        raise DecompressedOverLimit(
            f"image declares {declared} bytes after decompression, over the limit of {cap}"
        )
    return declared


def _reason(err: BaseException) -> str:
    """The decoder's reason, without payload bytes: gzip quotes the two bytes it found
    where its magic should be ("Not a gzipped file (b'ro')"), so that one is replaced."""
    if isinstance(err, gzip.BadGzipFile) and str(err).startswith("Not a gzipped file"):
        return "not a gzip stream (no gzip magic)"
    return " ".join(str(err).split())[:200]


class _Guarded(io.RawIOBase):
    """Turns a decompressor's own exceptions into a typed BundleError, but lets the
    underlying stream's BundleErrors (hash or size mismatch at its end) through."""

    def __init__(self, inner: BinaryIO, kind: str) -> None:
        self._inner = inner
        self._kind = kind

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        try:
            return self._inner.read(size)
        except BundleError:
            raise
        except (zstandard.ZstdError, zlib.error, gzip.BadGzipFile, EOFError, OSError) as err:
            raise DecompressError(f"{self._kind} data is corrupt: {_reason(err)}") from None

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        ri = getattr(self._inner, "readinto", None)
        if ri is None:
            data = self.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        try:
            return int(ri(buf) or 0)
        except BundleError:
            raise
        except (zstandard.ZstdError, zlib.error, gzip.BadGzipFile, EOFError, OSError) as err:
            raise DecompressError(f"{self._kind} data is corrupt: {_reason(err)}") from None

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)


class _ZstdFrames(io.RawIOBase):
    """zstd decoded one frame at a time, so each frame's end is known.

    ``on_frame(compressed, decompressed)`` is called at every frame end with the bytes
    consumed and produced so far: a place a later process can resume from, since a
    frame decodes without anything before it.
    """

    def __init__(self, raw: BinaryIO,
                 on_frame: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self._split = FrameSplitter(raw)
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: BinaryIO | None = None
        self._reader: Any = None
        self._on_frame = on_frame
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        while True:
            if self._reader is None:
                self._frame = self._split.next_frame()
                if self._frame is None:
                    return 0
                self._reader = self._dctx.stream_reader(
                    self._frame, read_size=READ_SIZE, read_across_frames=False, closefd=False)
            n = int(self._reader.readinto(buf) or 0)
            if n:
                self.produced += n
                return n
            self._reader.close()
            self._reader = None
            assert self._frame is not None
            if self._frame.read(1):  # the decoder ended the frame before its last byte
                raise FrameError(f"zstd frame ending at byte {self._split.consumed} has "
                                 "bytes after its end; corrupt image")
            if self._on_frame is not None:
                self._on_frame(self._split.consumed, self.produced)


def decompress_stream(kind: str | None, raw: BinaryIO, *,
                      on_frame: Callable[[int, int], None] | None = None,
                      max_output: int | None = None, what: str = "image") -> BinaryIO:
    """A readable stream of the decompressed bytes of ``raw`` (read from it lazily).

    ``on_frame``: zstd only, see ``_ZstdFrames``.
    ``max_output``: the stream raises DecompressedOverLimit (an OverLimit, a BundleError)
    on the read that would pass this many bytes; None: no cap. Use ``output_limit`` to
    pick it. ``what`` names the image in that message.
    """
    stream: BinaryIO
    if kind is None:
        stream = raw
    elif kind == "zstd":
        stream = cast(BinaryIO, _Guarded(cast(BinaryIO, _ZstdFrames(raw, on_frame)), "zstd"))
    elif kind in ("zlib", "gzip"):
        stream = cast(BinaryIO, _Guarded(
            cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb")), kind))
    else:
        raise BundleError(f"unknown compression {kind!r}; expected zstd, zlib (gzip) or none")
    if max_output is not None:
        stream = cast(BinaryIO, _Capped(stream, max_output, what))
    return stream


def compress_file(kind: str, src: BinaryIO, dst: BinaryIO, *, level: int | None = None) -> None:
    """Compress ``src`` into ``dst`` chunk by chunk."""
    if kind == "zstd":
        # The window is what every decoder must hold: cap it at 2 MiB (level 10 alone
        # picks 4 MiB, 19 picks 8) so installing costs a gateway little memory; rootfs
        # images lose almost nothing to the shorter match distance.
        params = zstandard.ZstdCompressionParameters.from_level(level or 10)
        params = zstandard.ZstdCompressionParameters.from_level(
            level or 10, window_log=min(params.window_log, MAX_WINDOW_LOG),
            write_checksum=True)
        cctx = zstandard.ZstdCompressor(compression_params=params)
        # One frame per FRAME_SIZE bytes of input: the places an interrupted install
        # can resume from (any zstd decoder reads concatenated frames as one stream).
        writer = cctx.stream_writer(dst, write_size=CHUNK, closefd=False)
        in_frame = 0
        while chunk := src.read(CHUNK):
            view = memoryview(chunk)
            while view:
                if in_frame == FRAME_SIZE:
                    writer.flush(zstandard.FLUSH_FRAME)
                    in_frame = 0
                take = view[: FRAME_SIZE - in_frame]
                writer.write(take)
                in_frame += len(take)
                view = view[len(take):]
        writer.close()  # ends the last frame
        return
    if kind in ("zlib", "gzip"):
        # mtime=0 and no file name: identical inputs give identical bundles.
        with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=level or 6, mtime=0) as gz:
            while chunk := src.read(CHUNK):
                gz.write(chunk)
        return
    raise BundleError(f"unknown compression {kind!r}; expected zstd, gzip or none")
