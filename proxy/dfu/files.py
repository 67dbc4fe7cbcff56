"""Firmware files: raw binaries, ``.dfu`` (DFU suffix) and DfuSe multi-target containers.

The suffix CRC is checked before the device is touched, and the suffix VID/PID against
the device once it is known (0xFFFF means "any", as in dfu-util). The writers produce
files that ``dfu-suffix -c`` and ``dfuse-pack -d`` accept (tests/peers/test_dfu_files.py).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from ferry.proxy.dfu.errors import BadImage, WrongDevice

SUFFIX_LEN = 16
SIGNATURE = b"UFD"
BCD_DFU_PLAIN = 0x0100
BCD_DFUSE = 0x011A
ANY = 0xFFFF


def dfu_crc(data: bytes) -> int:
    """The suffix CRC: reflected CRC-32 with no final XOR (== zlib's, complemented)."""
    return zlib.crc32(data) ^ 0xFFFFFFFF


@dataclass(frozen=True)
class DfuSuffix:
    bcd_device: int
    id_product: int
    id_vendor: int
    bcd_dfu: int
    length: int
    crc: int

    def check_ids(self, vid: int, pid: int) -> None:
        if (self.id_vendor != ANY and self.id_vendor != vid) or \
                (self.id_product != ANY and self.id_product != pid):
            raise WrongDevice(
                f"image is for {self.id_vendor:04x}:{self.id_product:04x} (DFU suffix) but the "
                f"device is {vid:04x}:{pid:04x}; pick the image built for this device")

    def matches(self, vid: int, pid: int) -> bool:
        try:
            self.check_ids(vid, pid)
        except WrongDevice:
            return False
        return True


def parse_suffix(data: bytes) -> DfuSuffix | None:
    """The file's DFU suffix, or None for a raw file; BadImage when the CRC is wrong."""
    if len(data) < SUFFIX_LEN or data[-8:-5] != SIGNATURE:
        return None
    bcd_device, pid, vid, bcd_dfu, _sig, length, crc = struct.unpack("<HHHH3sBI", data[-16:])
    if length < SUFFIX_LEN or length > len(data):
        raise BadImage(f"DFU suffix claims {length} bytes; the file is damaged")
    actual = dfu_crc(data[:-4])
    if actual != crc:
        raise BadImage(f"DFU suffix CRC is 0x{crc:08x} but the file's is 0x{actual:08x}: "
                       "the file is damaged or was edited after dfu-suffix")
    return DfuSuffix(bcd_device, pid, vid, bcd_dfu, length, crc)


def add_suffix(payload: bytes, vid: int = ANY, pid: int = ANY, *, bcd_device: int = ANY,
               bcd_dfu: int = BCD_DFU_PLAIN) -> bytes:
    head = payload + struct.pack("<HHHH3sB", bcd_device, pid, vid, bcd_dfu, SIGNATURE,
                                 SUFFIX_LEN)
    return head + struct.pack("<I", dfu_crc(head))


@dataclass(frozen=True)
class Element:
    address: int
    data: bytes


@dataclass(frozen=True)
class DfuseTarget:
    alt: int
    name: str
    elements: tuple[Element, ...]


def parse_dfuse(body: bytes) -> list[DfuseTarget]:
    """The targets of a DfuSe container (``body`` is the file without its suffix)."""
    if len(body) < 11 or body[:5] != b"DfuSe":
        raise BadImage("not a DfuSe file (no 'DfuSe' prefix)")
    version, _image_size, ntargets = struct.unpack_from("<BIB", body, 5)
    if version != 1:
        raise BadImage(f"DfuSe file version {version} is not supported (only 1)")
    pos = 11
    targets: list[DfuseTarget] = []
    for t in range(ntargets):
        if pos + 274 > len(body) or body[pos:pos + 6] != b"Target":
            raise BadImage(f"DfuSe target {t} is truncated or has no 'Target' signature")
        alt, named = struct.unpack_from("<BI", body, pos + 6)
        raw_name = body[pos + 11:pos + 266]
        name = raw_name.split(b"\0", 1)[0].decode("latin-1") if named else ""
        target_size, nelements = struct.unpack_from("<II", body, pos + 266)
        pos += 274
        end = pos + target_size
        if end > len(body):
            raise BadImage(f"DfuSe target {t} claims {target_size} bytes past the file end")
        elements: list[Element] = []
        for e in range(nelements):
            if pos + 8 > end:
                raise BadImage(f"DfuSe target {t} element {e} header is truncated")
            address, size = struct.unpack_from("<II", body, pos)
            if pos + 8 + size > end:
                raise BadImage(f"DfuSe target {t} element {e} data is truncated")
            elements.append(Element(address, bytes(body[pos + 8:pos + 8 + size])))
            pos += 8 + size
        pos = end
        targets.append(DfuseTarget(alt, name, tuple(elements)))
    return targets


def write_dfuse(targets: list[DfuseTarget], vid: int = ANY, pid: int = ANY, *,
                bcd_device: int = ANY) -> bytes:
    """A DfuSe container with its suffix, laid out as ``dfuse-pack`` writes it."""
    body = bytearray()
    for target in targets:
        elements = b"".join(struct.pack("<II", e.address, len(e.data)) + e.data
                            for e in target.elements)
        name = target.name.encode("latin-1")[:254]
        body += b"Target" + struct.pack("<BI", target.alt, 1 if name else 0)
        body += name.ljust(255, b"\0") + struct.pack("<II", len(elements), len(target.elements))
        body += elements
    image_size = 11 + len(body) + SUFFIX_LEN
    head = b"DfuSe" + struct.pack("<BIB", 1, image_size, len(targets)) + bytes(body)
    return add_suffix(head, vid, pid, bcd_device=bcd_device, bcd_dfu=BCD_DFUSE)


@dataclass(frozen=True)
class FirmwareImage:
    """A loaded file: ``payload`` for raw/.dfu, ``targets`` for DfuSe."""

    kind: str  # "raw", "dfu" or "dfuse"
    payload: bytes = b""
    suffix: DfuSuffix | None = None
    targets: tuple[DfuseTarget, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        if self.kind == "dfuse":
            return sum(len(e.data) for t in self.targets for e in t.elements)
        return len(self.payload)


def load_image(data: bytes, fmt: str = "") -> FirmwareImage:
    """Recognise a firmware file. ``fmt`` ("raw"/"bin", "dfu", "dfuse") forces a kind."""
    if fmt in ("raw", "bin"):
        return FirmwareImage("raw", data)
    suffix = parse_suffix(data)
    if suffix is None:
        if fmt in ("dfu", "dfuse"):
            raise BadImage(f"image declared {fmt!r} has no DFU suffix; add one with dfu-suffix")
        return FirmwareImage("raw", data)
    body = data[:-suffix.length]
    if body[:5] == b"DfuSe" or fmt == "dfuse":
        if suffix.bcd_dfu != BCD_DFUSE:
            raise BadImage(f"DfuSe file has bcdDFU 0x{suffix.bcd_dfu:04x}; expected 0x011a")
        return FirmwareImage("dfuse", suffix=suffix, targets=tuple(parse_dfuse(body)))
    return FirmwareImage("dfu", body, suffix)
