"""The newc/crc cpio container, read and written as a stream.

A bundle travels over HTTP straight into the reader, so the reader never seeks: it reads
each 110-byte header, the name, then hands out exactly ``filesize`` data bytes and eats
the 4-byte padding. Writing mirrors GNU ``cpio -o -H crc``: magic ``070702`` whose check
field is the byte sum of the data modulo 2**32, and the archive padded with NULs to a
512-byte block after the ``TRAILER!!!`` entry.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from ferry.packaging.errors import (
    BadHeader,
    BadMemberName,
    OverLimit,
    TrailingJunk,
    TruncatedBundle,
    shown,
)
from ferry.packaging.limits import NEWC_MAX_SIZE, Limits

MAGIC_NEWC = b"070701"
MAGIC_CRC = b"070702"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
BLOCK = 512
S_IFMT = 0o170000
S_IFREG = 0o100000
_HEX = frozenset(b"0123456789abcdefABCDEF")
_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)  # fmt: skip

# Byte sum without a Python loop over bytes: Adler-32 started at 0 leaves the byte sum
# modulo 65521 in its low half, and a window of at most 256 bytes sums to at most
# 255 * 256 = 65280 < 65521, so per window that value is the exact sum. This runs at a
# few hundred MiB/s (hashlib's sha256 speed), against ~100 MiB/s for sum(bytes).
_SUM_WINDOW = 256


def bytesum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """``start`` plus the sum of all bytes of ``data``, modulo 2**32 (the newc/crc check)."""
    view = memoryview(data).cast("B")
    adler = zlib.adler32
    total = start + sum(
        adler(view[pos : pos + _SUM_WINDOW], 0) & 0xFFFF
        for pos in range(0, len(view), _SUM_WINDOW)
    )
    return total & 0xFFFF_FFFF


def check_name(name: str, limits: Limits | None = None) -> None:
    """Refuse names that could leave a directory or confuse SWUpdate's flat namespace."""
    max_len = (limits or Limits()).max_name_length
    if not name or name in (".", "..") or "/" in name or ".." in name:
        raise BadMemberName(f"member name {shown(name)} contains '/' or '..' or is empty")
    if "\\" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadMemberName(f"member name {shown(name)} contains a backslash or control character")
    if len(name.encode()) > max_len:
        raise OverLimit(f"member name {shown(name, 40)} is longer than {max_len} bytes")


@dataclass(frozen=True)
class CpioHeader:
    name: str
    size: int
    mode: int
    mtime: int
    check: int
    crc: bool  # magic 070702: check is the data byte sum
    offset: int  # archive offset of the header

    @property
    def is_trailer(self) -> bool:
        return self.name == TRAILER


def encode_header(name: str, size: int, check: int, *, ino: int, mtime: int = 0) -> bytes:
    """Header plus NUL-terminated name plus padding to a 4-byte boundary."""
    if size > NEWC_MAX_SIZE:
        raise OverLimit(
            f"member {shown(name)} is {size} bytes; newc allows at most {NEWC_MAX_SIZE}"
        )
    raw_name = name.encode() + b"\0"
    mode = S_IFREG | 0o644 if name != TRAILER else 0
    nlink = 1
    values = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(raw_name), check)
    head = MAGIC_CRC + b"".join(b"%08X" % v for v in values) + raw_name
    return head + b"\0" * (-len(head) % 4)


def data_padding(size: int) -> bytes:
    return b"\0" * (-size % 4)


class CpioStreamReader:
    """One pass over a newc/crc archive from any object with ``read(n)``.

    Usage: ``h = next_header()``; then ``read_data(n)`` until it returns b"";
    then ``next_header()`` again (it checks the previous member's checksum and padding
    first). After the trailer call ``check_end()``.
    """

    def __init__(self, stream: BinaryIO, limits: Limits | None = None) -> None:
        self._stream = stream
        self.limits = limits or Limits()
        self.offset = 0
        self._remaining = 0
        self._current: CpioHeader | None = None
        self._sum = 0
        self._check_crc = True
        self.on_read: Callable[[int], None] | None = None

    # -- raw reading -------------------------------------------------------------------
    def _read_some(self, n: int) -> bytes:
        data = self._stream.read(n)
        if data is None:  # a non-blocking raw stream had nothing: treat as a wait
            data = b""
        if data:
            self.offset += len(data)
            cap = self.limits.max_bundle_size
            if cap and self.offset > cap:  # None or 0: no limit
                raise OverLimit(f"bundle is larger than the limit of {cap} bytes")
            if self.on_read is not None:
                self.on_read(len(data))
        return bytes(data)

    def _readinto_some(self, view: memoryview) -> int:
        """Like ``_read_some`` but into the caller's buffer: no bytes object, no copy
        when the stream has ``readinto`` (the slot writer's pooled buffers)."""
        ri = getattr(self._stream, "readinto", None)
        if ri is None:
            data = self._read_some(len(view))
            view[: len(data)] = data
            return len(data)
        n = int(ri(view) or 0)  # None from a non-blocking raw stream: treat as a wait
        if n:
            self.offset += n
            cap = self.limits.max_bundle_size
            if cap and self.offset > cap:  # None or 0: no limit
                raise OverLimit(f"bundle is larger than the limit of {cap} bytes")
            if self.on_read is not None:
                self.on_read(n)
        return n

    def _read_exact(self, n: int, what: str) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._read_some(n - got)
            if not chunk:
                raise TruncatedBundle(
                    f"bundle ends at byte {self.offset} inside {what}; the download or copy "
                    "is incomplete"
                )
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    # -- members -----------------------------------------------------------------------
    def next_header(self, *, check_crc: bool = True) -> CpioHeader:
        """The next member's header. ``check_crc=False`` skips recomputing that member's
        byte sum (for images, whose sha256 is checked anyway; the sum costs more CPU)."""
        if self._current is not None:
            self._finish_member()
        start = self.offset
        raw = self._read_exact(HEADER_LEN, f"the cpio header at byte {start}")
        magic = raw[:6]
        if magic not in (MAGIC_NEWC, MAGIC_CRC):
            # Offsets, never the bytes found: a file that is not a bundle (ferry install
            # PATH run by root) must not have its first bytes printed (issue 16).
            raise BadHeader(
                f"no newc cpio magic at byte {start}; not a .swu bundle or corrupted"
            )
        fields: dict[str, int] = {}
        for i, field in enumerate(_FIELDS):
            text = raw[6 + 8 * i : 14 + 8 * i]
            if not all(c in _HEX for c in text):
                raise BadHeader(f"cpio header at byte {start}: field {field} is not hex")
            fields[field] = int(text, 16)
        namesize = fields["namesize"]
        if namesize < 2 or namesize > self.limits.max_name_length + 1:
            if namesize >= 2:
                raise OverLimit(
                    f"cpio header at byte {start}: name of {namesize - 1} bytes is longer "
                    f"than {self.limits.max_name_length}"
                )
            raise BadHeader(f"cpio header at byte {start}: bad name size {namesize}")
        name_pad = -(HEADER_LEN + namesize) % 4
        raw_name = self._read_exact(namesize + name_pad, f"the member name at byte {start}")
        if raw_name[namesize - 1] != 0 or 0 in raw_name[: namesize - 1]:
            raise BadHeader(f"cpio header at byte {start}: name is not NUL-terminated")
        if any(raw_name[namesize:]):
            raise BadHeader(f"cpio header at byte {start}: non-zero name padding")
        try:
            name = raw_name[: namesize - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise BadMemberName(f"member name at byte {start} is not UTF-8") from None
        size = fields["filesize"]
        header = CpioHeader(
            name=name,
            size=size,
            mode=fields["mode"],
            mtime=fields["mtime"],
            check=fields["check"],
            crc=magic == MAGIC_CRC,
            offset=start,
        )
        if header.is_trailer:
            if size != 0:
                raise BadHeader(f"cpio trailer at byte {start} has data ({size} bytes)")
            self._current = None
            return header
        check_name(name, self.limits)
        if fields["mode"] & S_IFMT != S_IFREG:
            raise BadHeader(
                f"member {name!r} at byte {start} is not a regular file (mode {fields['mode']:o})"
            )
        if size > self.limits.max_member_size:
            raise OverLimit(
                f"member {name!r} is {size} bytes, over the limit of {self.limits.max_member_size}"
            )
        self._current = header
        self._remaining = size
        self._sum = 0
        self._check_crc = check_crc and header.crc
        return header

    def read_data(self, n: int = 1 << 20) -> bytes:
        """Up to ``n`` data bytes of the current member; b"" once it is fully read."""
        if self._current is None or self._remaining == 0:
            return b""
        want = min(n, self._remaining)
        chunk = self._read_some(want)
        if not chunk:
            cur = self._current
            raise TruncatedBundle(
                f"bundle ends at byte {self.offset} inside member {cur.name!r} "
                f"({self._remaining} of {cur.size} bytes missing)"
            )
        self._remaining -= len(chunk)
        if self._check_crc:
            self._sum = bytesum(chunk, self._sum)
        return chunk

    def readinto_data(self, buf: memoryview | bytearray) -> int:
        """``read_data`` into ``buf``: up to ``len(buf)`` data bytes of the current member
        land at its start; 0 once the member is fully read."""
        if self._current is None or self._remaining == 0 or len(buf) == 0:
            return 0
        view = memoryview(buf).cast("B")
        if len(view) > self._remaining:
            view = view[: self._remaining]
        n = self._readinto_some(view)
        if not n:
            cur = self._current
            raise TruncatedBundle(
                f"bundle ends at byte {self.offset} inside member {cur.name!r} "
                f"({self._remaining} of {cur.size} bytes missing)"
            )
        self._remaining -= n
        if self._check_crc:
            self._sum = bytesum(view[:n], self._sum)
        return n

    def read_member(self, limit: int, what: str) -> bytes:
        """The whole current member, which must be small (sw-description, signature)."""
        cur = self._current
        if cur is None:
            raise BadHeader("no current cpio member")
        if cur.size > limit:
            raise OverLimit(f"{what} is {cur.size} bytes, over the limit of {limit}")
        data = self._read_exact(cur.size, f"member {cur.name!r}")
        self._remaining = 0
        if self._check_crc:
            self._sum = bytesum(data)
        return data

    def skip_absent(self, n: int) -> None:
        """The current member's first ``n`` data bytes are not in the stream at all: a
        resumed download starts after them. Its checksum can no longer be checked."""
        if self._current is None or n > self._remaining:
            raise BadHeader(f"cannot skip {n} bytes of member "
                            f"{self._current.name if self._current else None!r}")
        self._remaining -= n
        self.offset += n
        self._check_crc = False

    @property
    def remaining(self) -> int:
        return self._remaining

    def checksum_ok(self) -> bool:
        """Whether the fully read current member matches its header's check field."""
        cur = self._current
        return cur is None or not self._check_crc or self._sum == cur.check

    def _finish_member(self) -> None:
        cur = self._current
        assert cur is not None
        while self._remaining:
            if not self.read_data():
                break
        if not self.checksum_ok():
            raise BadHeader(
                f"member {cur.name!r}: cpio checksum {self._sum:08x} does not match header "
                f"{cur.check:08x}"
            )
        pad = self._read_exact(-cur.size % 4, f"the padding after {cur.name!r}")
        if any(pad):
            raise BadHeader(f"non-zero padding after member {cur.name!r}")
        self._current = None

    def check_end(self) -> None:
        """After the trailer: only NUL padding (GNU cpio pads to its block size) may follow."""
        budget = self.limits.max_trailer_padding
        seen = 0
        while True:
            chunk = self._read_some(min(65536, budget + 1 - seen))
            if not chunk:
                return
            if any(chunk):
                raise TrailingJunk(
                    f"non-zero data after the cpio trailer at byte "
                    f"{self.offset - len(chunk)}; the bundle has trailing junk"
                )
            seen += len(chunk)
            if seen > budget:
                raise TrailingJunk(
                    f"more than {budget} bytes of padding after the cpio trailer; "
                    "the bundle has trailing junk"
                )


class CpioStreamWriter:
    """Writes members to a stream; the caller supplies size and byte sum up front."""

    def __init__(self, out: BinaryIO, *, mtime: int = 0) -> None:
        self._out = out
        self._ino = 0
        self._mtime = mtime
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.offset += len(data)

    def add_bytes(self, name: str, data: bytes) -> None:
        self.begin(name, len(data), bytesum(data))
        self._write(data)
        self.end(len(data))

    def begin(self, name: str, size: int, check: int) -> None:
        if name != TRAILER:
            check_name(name)
        self._ino += 1
        self._write(encode_header(name, size, check, ino=self._ino, mtime=self._mtime))

    def write(self, data: bytes) -> None:
        self._write(data)

    def end(self, size: int) -> None:
        self._write(data_padding(size))

    def finish(self) -> None:
        self.begin(TRAILER, 0, 0)
        self._write(b"\0" * (-self.offset % BLOCK))
