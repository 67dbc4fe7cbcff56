"""Where a bundle comes from: a local path or an http(s) URL, always as a forward-only stream.

The bundle reader must work on a stream that cannot seek (a download), so local files
are handed over the same way: one code path, and nothing in the pipeline can come to
depend on seeking back.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.install.download import DownloadOptions


# Small on purpose: a BufferedReader copies reads no larger than its buffer through it,
# but reads larger ones (the slot writer's 512 KiB readinto) straight into the caller's
# buffer. Headers and names are still served from it.
BUFFER = 64 << 10


class SourceError(FerryError):
    pass


@dataclass
class OpenedSource:
    stream: BinaryIO  # buffered, read(n) returns n bytes unless at EOF
    size: int | None
    is_url: bool
    raw: io.RawIOBase


class _CountingFile(io.RawIOBase):
    """A local file without seek/tell, so it behaves like the network stream.

    Regular files only: the file is opened non-blocking and checked before a byte is
    read, so a FIFO or a tty given as a bundle is refused at once instead of hanging
    the caller (an open() of a FIFO waits for a writer, a read of a tty for a line).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(mode):
                raise SourceError(f"bundle {path} is not a regular file (a FIFO, socket or "
                                  "device); give the .swu file")
            os.set_blocking(fd, True)
            self._f = open(fd, "rb", buffering=0, closefd=True)  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        n = self._f.readinto(b) or 0
        self.offset += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted download of the rootfs can pick up after a restart.

    The bundle's first ``data_start`` bytes (cpio headers, sw-description, signature,
    the rootfs header) were kept in ``head``; the first ``synced`` bytes of the slot are
    durable (fsynced) and the rootfs continues at its stored byte ``stored``.

    A stored (uncompressed) rootfs: ``stored == synced``; head + slot prefix + Range
    for the rest gives the reader the whole bundle again, so every byte is verified as
    before. A zstd rootfs (``compressed``): ``stored`` is the end of the last frame that
    reached the slot; head + Range from there, the reader skips the stored bytes it
    never sees and the slot writer checks the signed decompressed-sha256 over the slot
    prefix read back plus the rest. Either way a slot prefix that did not survive shows
    up as a hash mismatch, never as a bootable slot.
    """

    head: Path
    data_start: int
    slot: Path
    synced: int
    validator: str | None
    stored: int = -1  # -1: same as synced (a stored rootfs)
    compressed: bool = False

    @property
    def offset(self) -> int:
        return self.data_start + (self.synced if self.stored < 0 else self.stored)


class _Segments(io.RawIOBase):
    """Several raw streams one after the other."""

    def __init__(self, parts: list[io.RawIOBase]) -> None:
        super().__init__()
        self._parts = parts

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        while self._parts:
            n = self._parts[0].readinto(b) or 0
            if n:
                return n
            self._parts.pop(0).close()
        return 0

    def close(self) -> None:
        for p in self._parts:
            p.close()
        super().close()


class _FileRange(io.RawIOBase):
    def __init__(self, path: Path, length: int) -> None:
        super().__init__()
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(b)[: self._left]
        n = self._f.readinto(view) or 0
        if n == 0:
            raise SourceError(f"{self._f.name} ended {self._left} bytes early; cannot resume")
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def is_url(source: str) -> bool:
    return "://" in source[:16]


def open_source(
    source: str,
    options: DownloadOptions | None = None,
    *,
    on_offset: Callable[[int, str | None], None] | None = None,
    resume: ResumePoint | None = None,
) -> OpenedSource:
    if is_url(source):
        # requests is imported only for URLs: a USB-stick install starts faster
        from ferry.daemon.install.download import HttpStream, Prefetch, check_scheme

        check_scheme(source)
        if resume is not None:
            http = HttpStream(source, options, on_offset=on_offset,
                              start_offset=resume.offset, validator=resume.validator)
            parts: list[io.RawIOBase] = [_FileRange(resume.head, resume.data_start)]
            if not resume.compressed:  # the slot holds the stored bytes themselves
                parts.append(_FileRange(resume.slot, resume.synced))
            raw: io.RawIOBase = _Segments([*parts, http])
        else:
            http = HttpStream(source, options, on_offset=on_offset)
            raw = http
        size = http.size
        url = True
        ahead: io.RawIOBase = Prefetch(raw)
        return OpenedSource(stream=io.BufferedReader(ahead, BUFFER),
                            size=size, is_url=url, raw=http)
    else:
        path = Path(source)
        try:
            raw = _CountingFile(str(path))
        except FileNotFoundError:
            raise SourceError(f"bundle {source} not found") from None
        except IsADirectoryError:
            raise SourceError(f"bundle {source} is a directory, give the .swu file") from None
        except PermissionError:
            raise SourceError(f"cannot read bundle {source}: permission denied") from None
        size = os.fstat(raw._f.fileno()).st_size
        url = False
    return OpenedSource(stream=io.BufferedReader(raw, BUFFER),
                        size=size, is_url=url, raw=raw)
