"""Flash memory of the simulated device: plain DFU targets and DfuSe memory maps.

Memory starts erased (0xFF) and a byte can be programmed only while erased, as on real
NOR flash, so a host that forgets a DfuSe page erase gets errCHECK_ERASED.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RIGHT_READ = 1
RIGHT_ERASE = 2
RIGHT_WRITE = 4


@dataclass(frozen=True)
class Segment:
    """``count`` pages of ``page_size`` bytes with one access letter (``a``..``g``)."""

    count: int
    page_size: int
    rights: str = "g"

    @property
    def size(self) -> int:
        return self.count * self.page_size

    @property
    def bits(self) -> int:
        return ord(self.rights) & 7

    def layout(self) -> str:
        # dfu-util reads <count>*<size><mult><type>; use K when it divides evenly.
        if self.page_size % 1024 == 0:
            return f"{self.count:02d}*{self.page_size // 1024:03d}K{self.rights}"
        return f"{self.count:02d}*{self.page_size:03d}B{self.rights}"


@dataclass
class Region:
    """One alt setting's memory: a DfuSe region at ``start`` or a plain DFU target."""

    name: str
    start: int = 0
    segments: tuple[Segment, ...] = (Segment(64, 1024),)
    data: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if not self.data:
            self.data = bytearray(b"\xff" * self.size)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def end(self) -> int:
        return self.start + self.size

    def layout_string(self) -> str:
        segs = ",".join(s.layout() for s in self.segments)
        return f"@{self.name}/0x{self.start:08x}/{segs}"

    def page(self, address: int) -> tuple[int, int, Segment] | None:
        """(page start, page size, segment) of the page holding ``address``."""
        base = self.start
        for seg in self.segments:
            if base <= address < base + seg.size:
                index = (address - base) // seg.page_size
                return base + index * seg.page_size, seg.page_size, seg
            base += seg.size
        return None

    def allows(self, address: int, length: int, right: int) -> bool:
        pos = address
        end = address + length
        while pos < end:
            found = self.page(pos)
            if found is None or not found[2].bits & right:
                return False
            pos = found[0] + found[1]
        return True

    def erase_page(self, address: int) -> bool:
        found = self.page(address)
        if found is None or not found[2].bits & RIGHT_ERASE:
            return False
        off = found[0] - self.start
        self.data[off:off + found[1]] = b"\xff" * found[1]
        return True

    def erase_all(self) -> None:
        self.data[:] = b"\xff" * self.size

    def is_erased(self, address: int, length: int) -> bool:
        off = address - self.start
        return self.data[off:off + length].count(0xFF) == length

    def program(self, address: int, chunk: bytes) -> None:
        off = address - self.start
        self.data[off:off + len(chunk)] = chunk

    def read(self, address: int, length: int) -> bytes:
        off = address - self.start
        return bytes(self.data[off:off + length])
