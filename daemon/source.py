"""Where a bundle comes from: a local path or an http(s) URL, always as a forward-only stream.

The bundle reader must work on a stream that cannot seek (a download), so local files
are handed over the same way: one code path, and nothing in the pipeline can come to
depend on seeking back.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.download import DownloadOptions


class SourceError(FerryError):
    pass


@dataclass
class OpenedSource:
    stream: BinaryIO  # buffered, read(n) returns n bytes unless at EOF
    size: int | None
    is_url: bool
    raw: io.RawIOBase


class _CountingFile(io.RawIOBase):
    """A local file without seek/tell, so it behaves like the network stream."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
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


def is_url(source: str) -> bool:
    return "://" in source[:16]


def open_source(
    source: str,
    options: DownloadOptions | None = None,
    *,
    on_offset: Callable[[int, str | None], None] | None = None,
) -> OpenedSource:
    if is_url(source):
        # requests is imported only for URLs: a USB-stick install starts faster
        from ferry.daemon.download import HttpStream, check_scheme

        check_scheme(source)
        http = HttpStream(source, options, on_offset=on_offset)
        size = http.size
        raw: io.RawIOBase = http
        url = True
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
    stream = io.BufferedReader(raw, 1 << 20)
    return OpenedSource(stream=stream, size=size, is_url=url, raw=raw)
