"""Streaming (de)compression of bundle images: zstd, gzip (SWUpdate calls it "zlib"), none.

Everything here works chunk by chunk on file-like objects, so an image of any size passes
through in bounded memory and without seeking.
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import BinaryIO, cast

import zstandard

from ferry.packaging.errors import BundleError

CHUNK = 1 << 20
# what the zstd reader asks of the bundle stream per call; small, it is held per install
READ_SIZE = 256 << 10
MAX_WINDOW_LOG = 21  # zstd windows of bundles ferry writes: 2 MiB
# The CLI says gzip (what the file is); sw-description says zlib (SWUpdate's name for it).
CLI_TO_DESCRIPTION = {"zstd": "zstd", "gzip": "zlib", "none": None}


class DecompressError(BundleError):
    """An image's compressed data is corrupt."""


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
            raise DecompressError(f"{self._kind} data is corrupt: {err}") from None

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)


def decompress_stream(kind: str | None, raw: BinaryIO) -> BinaryIO:
    """A readable stream of the decompressed bytes of ``raw`` (read from it lazily)."""
    if kind is None:
        return raw
    if kind == "zstd":
        inner = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=READ_SIZE, read_across_frames=True
        )
        return cast(BinaryIO, _Guarded(cast(BinaryIO, inner), "zstd"))
    if kind in ("zlib", "gzip"):
        return cast(BinaryIO, _Guarded(cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb")), kind))
    raise BundleError(f"unknown compression {kind!r}; expected zstd, zlib (gzip) or none")


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
        cctx.copy_stream(src, dst, read_size=CHUNK, write_size=CHUNK)
        return
    if kind in ("zlib", "gzip"):
        # mtime=0 and no file name: identical inputs give identical bundles.
        with gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=level or 6, mtime=0) as gz:
            while chunk := src.read(CHUNK):
                gz.write(chunk)
        return
    raise BundleError(f"unknown compression {kind!r}; expected zstd, gzip or none")
