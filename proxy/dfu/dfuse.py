"""ST DfuSe 1.1a on top of DFU: address pointer, page erase from the memory map, leave.

The memory map comes from the alt setting's string (``@name/0xSTART/NN*SSSKg,...``); it
decides which pages to erase and whether an image fits at all, before anything is
erased, so an oversized image fails without touching the device.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ferry.proxy.dfu.errors import DeviceGone, DfuError, ImageTooLarge, Stalled
from ferry.proxy.dfu.protocol import DfuDevice, State
from ferry.proxy.transport import Progress, no_progress

CMD_SET_ADDRESS = 0x21
CMD_ERASE = 0x41
READABLE, ERASABLE, WRITEABLE = 1, 2, 4
_SEGMENT = re.compile(r"^\s*(\d+)\s*\*\s*(\d+)\s*([BKM ]?)\s*([a-g])\s*$")
_MULT = {"B": 1, " ": 1, "": 1, "K": 1024, "M": 1024 * 1024}


@dataclass(frozen=True)
class Segment:
    start: int
    count: int
    page_size: int
    rights: int

    @property
    def end(self) -> int:
        return self.start + self.count * self.page_size


@dataclass(frozen=True)
class MemoryLayout:
    name: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, text: str) -> MemoryLayout:
        """Parse a DfuSe alt-setting string as dfu-util's dfuse_mem.c does."""
        if not text.startswith("@"):
            raise DfuError(f"alt setting name {text!r} is not a DfuSe memory map (no '@')")
        parts = text[1:].split("/")
        if len(parts) < 3 or len(parts) % 2 == 0:
            raise DfuError(f"malformed DfuSe memory map {text!r}")
        segments: list[Segment] = []
        for addr_text, segs_text in zip(parts[1::2], parts[2::2], strict=True):
            try:
                address = int(addr_text.strip(), 16)
            except ValueError:
                raise DfuError(f"bad address {addr_text!r} in DfuSe memory map") from None
            for item in segs_text.split(","):
                match = _SEGMENT.match(item)
                if not match:
                    raise DfuError(f"bad segment {item!r} in DfuSe memory map {text!r}")
                count, size, mult, kind = match.groups()
                seg = Segment(address, int(count), int(size) * _MULT[mult], ord(kind) & 7)
                segments.append(seg)
                address = seg.end
        return cls(parts[0].strip(), tuple(segments))

    @property
    def start(self) -> int:
        return self.segments[0].start

    def page(self, address: int) -> tuple[int, int, int] | None:
        """(page start, page size, rights) of the page holding ``address``."""
        for seg in self.segments:
            if seg.start <= address < seg.end:
                start = seg.start + (address - seg.start) // seg.page_size * seg.page_size
                return start, seg.page_size, seg.rights
        return None

    def pages(self, address: int, length: int, need: int) -> list[int]:
        """Start of every page ``[address, address+length)`` touches; all must allow ``need``."""
        out: list[int] = []
        pos = address
        end = address + length
        while pos < end:
            found = self.page(pos)
            if found is None:
                raise ImageTooLarge(
                    f"image range 0x{address:08x}..0x{end:08x} does not fit memory "
                    f"{self.name!r} (no memory at 0x{pos:08x}); check the image and --alt")
            if found[2] & need != need:
                raise DfuError(f"memory at 0x{pos:08x} in {self.name!r} is not "
                               f"{'writeable' if need & WRITEABLE else 'readable'}")
            out.append(found[0])
            pos = found[0] + found[1]
        return out


class DfuseDevice:
    """DfuSe commands through a :class:`DfuDevice` whose alt setting is already selected."""

    def __init__(self, dfu: DfuDevice, layout: MemoryLayout) -> None:
        self.dfu = dfu
        self.layout = layout

    def _command(self, payload: bytes, what: str, *, timeout_s: float | None = None) -> None:
        self.dfu.dnload(0, payload)
        st = self.dfu.wait_ready(what, timeout_s=timeout_s)
        if st.state != State.DNLOAD_IDLE:
            raise DfuError(f"device in state {st.state.name} after {what}")

    def set_address(self, address: int) -> None:
        self._command(struct.pack("<BI", CMD_SET_ADDRESS, address),
                      f"SET_ADDRESS 0x{address:08x}")

    def erase_page(self, address: int) -> None:
        self._command(struct.pack("<BI", CMD_ERASE, address), f"ERASE 0x{address:08x}")

    def check(self, address: int, length: int) -> list[int]:
        return self.layout.pages(address, length, WRITEABLE | ERASABLE)

    def write(self, address: int, data: bytes, progress: Progress = no_progress) -> None:
        """Erase every page the data touches, then program it block by block."""
        pages = self.check(address, len(data))
        for i, page in enumerate(pages):
            self.erase_page(page)
            progress(i + 1, len(pages), "erase")
        size = self.dfu.func.transfer_size
        # The address pointer is re-set every 0x4000 blocks so wBlockNum never wraps.
        for base in range(0, len(data), size * 0x4000):
            self.set_address(address + base)
            part = data[base:base + size * 0x4000]
            for n, off in enumerate(range(0, len(part), size)):
                chunk = part[off:off + size]
                self.dfu.dnload(2 + n, chunk)
                self.dfu.wait_ready(f"DNLOAD at 0x{address + base + off:08x}")
                progress(base + off + len(chunk), len(data), "download")

    def read(self, address: int, length: int, progress: Progress = no_progress) -> bytes:
        self.layout.pages(address, length, READABLE)
        self.set_address(address)
        self.dfu.abort()  # UPLOAD is only accepted from dfuIDLE
        size = self.dfu.func.transfer_size
        out = bytearray()
        block = 2
        while len(out) < length:
            out += self.dfu.upload(block, size)
            block += 1
            progress(min(len(out), length), length, "verify")
        self.dfu.abort()
        return bytes(out[:length])

    def leave(self, address: int | None = None) -> None:
        """Jump to the application (dfu-util's ``:leave``); the device may vanish at once."""
        try:
            if address is not None:
                self.set_address(address)
            self.dfu.dnload(2, b"")
            self.dfu.get_status()
        except (DeviceGone, Stalled):
            pass
