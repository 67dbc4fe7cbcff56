"""Open a bundle URL so that a delta rootfs's stored bytes are never downloaded whole.

The install pipeline reads a bundle as one forward stream. For a delta rootfs that
stream must stop before the rootfs member (the chunks come by Range, only those the
gateway lacks) and go on after it (target images, the trailer). A read-ahead download
from byte 0 cannot stop there without wasting what is already in flight, so for a URL
the bundle's head is fetched by Range first: up to the end of the rootfs member's cpio
header, including the signed chunk index. The bundle reader is then handed that head
followed by a Range download from the end of the rootfs member, opened only when the
reader gets there; it sees the rootfs member as "absent", exactly as after a resumed
download (BundleReader.images(skip_first=...)), and checks everything else as always.

Nothing here is trusted: the head is parsed only to find where members are; the
reader verifies the signature, the index's sha256 and every header from the same bytes.
A head that does not parse, a bundle without a delta rootfs, a server that ignores
Range: ``open_delta`` returns None and the pipeline downloads the bundle as always
(the last with a warning, since it costs the whole rootfs).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.daemon.config import Config
from ferry.daemon.install.bundlesource import OpenedSource, is_url
from ferry.daemon.install.deltafetch import RangeFetcher
from ferry.daemon.install.download import (
    DownloadError,
    DownloadOptions,
    HttpStream,
    RangeNotSupported,
)
from ferry.errors import FerryError
from ferry.packaging.description import DESCRIPTION_NAME, parse_description

log = logging.getLogger(__name__)

PROBE = 16 << 10  # the first request: sw-description and its signature fit, mostly
MAX_HEAD = 80 << 20  # description + signature + chunk index limits, with headers
_HEADER_LEN = 110


@dataclass
class DeltaHead:
    url: str
    head: bytes  # the bundle's bytes before the rootfs member's data
    data_start: int  # bundle offset of the rootfs member's first stored byte
    member_size: int  # stored bytes of the rootfs member (the chunk store)
    validator: str | None
    size: int | None  # whole bundle, from Content-Range
    base: Path | None = None  # the active slot, read-only: where chunks are looked for
    base_size: int | None = None  # bytes of it that ferry wrote and verified
    base_name: str | None = None  # its slot name, and the signed sha256 of its image
    base_sha256: str | None = None

    @property
    def data_end(self) -> int:
        return self.data_start + self.member_size


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _header(head: _Head, pos: int) -> tuple[str, int, int]:
    """(name, data offset, size) of the cpio member at ``pos``, fetching no byte past
    the header and its name; ValueError if it is not one."""
    head.need(pos + _HEADER_LEN)
    hdr = bytes(head.buf[pos:pos + _HEADER_LEN])
    if hdr[:6] not in (b"070701", b"070702"):
        raise ValueError("not a cpio header")
    size = int(hdr[54:62], 16)
    namesize = int(hdr[94:102], 16)
    if not 2 <= namesize <= 256:
        raise ValueError("bad name size")
    data = pos + _align4(_HEADER_LEN + namesize)
    head.need(data)
    name = bytes(head.buf[pos + _HEADER_LEN:pos + _HEADER_LEN + namesize - 1]).decode("utf-8")
    return name, data, size


class _Head:
    def __init__(self, fetcher: RangeFetcher, first: bytes) -> None:
        self.fetcher = fetcher
        self.buf = bytearray(first)

    def need(self, n: int) -> None:
        if n > MAX_HEAD:
            raise ValueError("head too large")
        if n > len(self.buf):
            self.buf += self.fetcher.get(len(self.buf), n - len(self.buf))


def probe(url: str, options: DownloadOptions | None) -> DeltaHead | None:
    """The head of a delta bundle at ``url``, or None when the normal download applies."""
    fetcher = RangeFetcher(url, options, validator=None)
    try:
        resp = fetcher._open(0, PROBE - 1)
    except RangeNotSupported:
        log.warning("%s: the server ignores Range requests, so a delta rootfs cannot be "
                    "fetched in part; downloading the whole bundle", url)
        return None
    except (FerryError, OSError, Exception) as err:  # the normal download reports it
        log.info("delta probe of %s failed (%s); downloading the whole bundle", url, err)
        return None
    try:
        validator = resp.headers.get("ETag")
        if not validator or validator.startswith("W/"):
            validator = resp.headers.get("Last-Modified")
        total_text = resp.headers.get("Content-Range", "").rpartition("/")[2]
        total = int(total_text) if total_text.isdigit() else None
        first = resp.raw.read(PROBE)
    except Exception as err:  # a stall, a drop: the normal download retries and reports
        log.info("delta probe of %s failed (%s); downloading the whole bundle", url, err)
        return None
    finally:
        resp.close()
    fetcher.validator = validator
    try:
        return _locate(url, _Head(fetcher, first), validator, total)
    except (ValueError, UnicodeDecodeError, FerryError) as err:
        # not a delta bundle, or not one we can read ahead of the reader: the normal
        # path reads (and reports on) it
        log.debug("%s: no delta rootfs (%s)", url, err)
        return None
    finally:
        fetcher.close()


def _locate(url: str, head: _Head, validator: str | None, total: int | None) -> DeltaHead | None:
    name, data, size = _header(head, 0)
    if name != DESCRIPTION_NAME or size > (1 << 20):
        return None
    head.need(data + size)
    desc = parse_description(bytes(head.buf[data:data + size]))  # unverified: layout only
    rootfs = desc.rootfs()
    if (rootfs is None or rootfs.delta is None or desc.images[0] is not rootfs
            or getattr(rootfs, "encrypted", False)):
        return None
    pos = _align4(data + size)
    expect = ["sw-description.sig", rootfs.delta.index, rootfs.filename]
    for want in expect:
        name, data, size = _header(head, pos)
        if name != want:
            return None
        if want == rootfs.filename:
            if size != rootfs.size:
                return None
            return DeltaHead(url=url, head=bytes(head.buf[:data]), data_start=data,
                             member_size=size, validator=validator, size=total)
        pos = _align4(data + size)
    return None


class _Spliced(io.RawIOBase):
    """The head's bytes, then a download from the end of the rootfs member, opened
    when the head is used up."""

    def __init__(self, head: DeltaHead, options: DownloadOptions | None) -> None:
        super().__init__()
        self._head = io.BytesIO(head.head)
        self._info = head
        self._opts = options
        self._tail: HttpStream | None = None
        self.validator = head.validator

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._head.readinto(b)
        if n:
            return n
        if self._tail is None:
            self._tail = HttpStream(self._info.url, self._opts,
                                    start_offset=self._info.data_end,
                                    validator=self._info.validator)
        return int(self._tail.readinto(b) or 0)

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
        super().close()


def open_delta(url: str, options: DownloadOptions | None) -> tuple[DeltaHead, Any] | None:
    """(head, stream) for a delta bundle: the stream is what the bundle reader reads, with
    the rootfs member's stored bytes left out; None for any other bundle."""
    try:
        head = probe(url, options)
    except DownloadError:
        return None
    if head is None:
        return None
    return head, io.BufferedReader(_Spliced(head, options), 64 << 10)


def delta_base(config: Config, bootloader: Any) -> tuple[Path, int, str, str] | None:
    """The booted slot and its verified size, when ferry wrote and verified it.

    A delta is planned only against a base ferry knows: a slot whose record says
    VERIFIED (boot/slotrecord: written by a ferry install, hash checked). Chunks found
    there are still hashed one by one before use; the record only tells how many bytes
    are the image (so the rest of a larger partition is not read) and keeps a
    factory-flashed or hand-written slot, or a second probe request per install, out
    of the way until ferry has written a slot once.
    """
    from ferry.daemon.boot.slotrecord import VERIFIED, get_record

    try:
        booted = config.slot(bootloader.booted())
        record = get_record(config, booted.name)
    except FerryError:
        return None
    if record is None or record.state != VERIFIED or not record.size or not record.sha256:
        return None
    return Path(booted.device), record.size, booted.name, record.sha256


def open_delta_source(source: str, options: DownloadOptions | None, *,
                      base: tuple[Path, int, str, str] | None,
                      ) -> tuple[DeltaHead, OpenedSource] | None:
    """The pipeline's source for a delta bundle URL; None for a path, another bundle, or
    when there is no verified base to take chunks from."""
    if not is_url(source) or base is None:
        return None
    opened = open_delta(source, options)
    if opened is None:
        return None
    head, stream = opened
    head.base, head.base_size, head.base_name, head.base_sha256 = base
    return head, OpenedSource(stream=stream, size=head.size, is_url=True, raw=stream.raw)
