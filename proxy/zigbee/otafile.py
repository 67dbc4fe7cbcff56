"""The Zigbee OTA upgrade file (ZCL spec 11.4): header, optional fields, sub-elements.

The header is read and written field by field, optional fields included, so a file
ferry rebuilds is byte-identical to the one it read: a node or Zigbee2MQTT that checks
``total_image_size`` or a signature over the header must see exactly what the vendor
shipped. Sub-elements are kept as opaque (tag, bytes) pairs for the same reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from ferry.proxy.zigbee.errors import OtaFileError

MAGIC = 0x0BEEF11E
HEADER_VERSION = 0x0100
BASE_HEADER_LEN = 56

FC_SECURITY_CREDENTIAL = 0x0001
FC_DEVICE_SPECIFIC = 0x0002
FC_HARDWARE_VERSIONS = 0x0004

TAG_UPGRADE_IMAGE = 0x0000
TAG_ECDSA_SIGNATURE_1 = 0x0001
TAG_ECDSA_CERT_1 = 0x0002
TAG_INTEGRITY_CODE = 0x0003
TAG_PICTURE = 0x0004
TAG_ECDSA_SIGNATURE_2 = 0x0005
TAG_ECDSA_CERT_2 = 0x0006

IMAGE_TYPE_WILDCARD = 0xFFFF

_BASE = struct.Struct("<IHHHHHIH32sI")
_SUBELEMENT = struct.Struct("<HI")


@dataclass(frozen=True)
class OtaHeader:
    """The OTA header; ``header_length`` and ``total_image_size`` are derived on write."""

    manufacturer_code: int
    image_type: int
    file_version: int
    stack_version: int = 0x0002  # Zigbee PRO
    header_string: bytes = b""
    security_credential_version: int | None = None
    upgrade_file_destination: int | None = None  # EUI64 as an integer
    min_hardware_version: int | None = None
    max_hardware_version: int | None = None
    header_version: int = HEADER_VERSION
    header_length: int = BASE_HEADER_LEN
    total_image_size: int = 0

    @property
    def field_control(self) -> int:
        fc = 0
        if self.security_credential_version is not None:
            fc |= FC_SECURITY_CREDENTIAL
        if self.upgrade_file_destination is not None:
            fc |= FC_DEVICE_SPECIFIC
        if self.min_hardware_version is not None:
            fc |= FC_HARDWARE_VERSIONS
        return fc

    def computed_header_length(self) -> int:
        n = BASE_HEADER_LEN
        if self.security_credential_version is not None:
            n += 1
        if self.upgrade_file_destination is not None:
            n += 8
        if self.min_hardware_version is not None:
            n += 4
        return n

    def hardware_ok(self, hw_version: int | None) -> bool:
        """Whether a node reporting ``hw_version`` may take this image.

        An image restricted to a hardware range is refused to a node that does not say
        its hardware version: flashing the wrong board revision can brick it.
        """
        if self.min_hardware_version is None:
            return True
        if hw_version is None:
            return False
        assert self.max_hardware_version is not None
        return self.min_hardware_version <= hw_version <= self.max_hardware_version

    def serialize(self) -> bytes:
        if len(self.header_string) > 32:
            raise OtaFileError("OTA header string is longer than 32 bytes; shorten it")
        if (self.min_hardware_version is None) != (self.max_hardware_version is None):
            raise OtaFileError("OTA header needs both min and max hardware version, or neither")
        out = _BASE.pack(
            MAGIC,
            self.header_version,
            self.header_length,
            self.field_control,
            self.manufacturer_code,
            self.image_type,
            self.file_version,
            self.stack_version,
            self.header_string.ljust(32, b"\0"),
            self.total_image_size,
        )
        if self.security_credential_version is not None:
            out += struct.pack("<B", self.security_credential_version)
        if self.upgrade_file_destination is not None:
            out += struct.pack("<Q", self.upgrade_file_destination)
        if self.min_hardware_version is not None:
            assert self.max_hardware_version is not None
            out += struct.pack("<HH", self.min_hardware_version, self.max_hardware_version)
        # Vendors may pad the header beyond the fields they use; keep the padding.
        return out.ljust(self.header_length, b"\0")


def parse_header(data: bytes) -> OtaHeader:
    """Parse the header at the start of ``data`` (which may hold more than the header)."""
    if len(data) < BASE_HEADER_LEN:
        raise OtaFileError(f"OTA file too short for a header ({len(data)} < 56 bytes)")
    (magic, hver, hlen, fc, mfr, itype, fver, stack, hstr, total) = _BASE.unpack_from(data)
    if magic != MAGIC:
        raise OtaFileError(
            f"not a Zigbee OTA file: identifier 0x{magic:08X}, expected 0x0BEEF11E"
        )
    pos = BASE_HEADER_LEN
    need = BASE_HEADER_LEN + (fc & 1) + 8 * ((fc >> 1) & 1) + 4 * ((fc >> 2) & 1)
    if hlen < need or len(data) < need:
        raise OtaFileError(f"OTA header length {hlen} too small for its field control 0x{fc:04X}")
    scv = dest = hw_min = hw_max = None
    if fc & FC_SECURITY_CREDENTIAL:
        scv = data[pos]
        pos += 1
    if fc & FC_DEVICE_SPECIFIC:
        (dest,) = struct.unpack_from("<Q", data, pos)
        pos += 8
    if fc & FC_HARDWARE_VERSIONS:
        hw_min, hw_max = struct.unpack_from("<HH", data, pos)
    if total < hlen:
        raise OtaFileError(f"OTA total image size {total} is smaller than its header ({hlen})")
    return OtaHeader(
        manufacturer_code=mfr,
        image_type=itype,
        file_version=fver,
        stack_version=stack,
        header_string=hstr.rstrip(b"\0"),
        security_credential_version=scv,
        upgrade_file_destination=dest,
        min_hardware_version=hw_min,
        max_hardware_version=hw_max,
        header_version=hver,
        header_length=hlen,
        total_image_size=total,
    )


@dataclass(frozen=True)
class SubElement:
    tag: int
    data: bytes


@dataclass(frozen=True)
class OtaFile:
    header: OtaHeader
    elements: tuple[SubElement, ...] = field(default_factory=tuple)

    def image(self) -> bytes:
        """The payload of the first upgrade-image (tag 0x0000) sub-element."""
        for el in self.elements:
            if el.tag == TAG_UPGRADE_IMAGE:
                return el.data
        raise OtaFileError("OTA file has no upgrade image (tag 0x0000) sub-element")

    def serialize(self) -> bytes:
        body = b"".join(_SUBELEMENT.pack(e.tag, len(e.data)) + e.data for e in self.elements)
        return self.header.serialize() + body


def build(header: OtaHeader, elements: list[SubElement] | tuple[SubElement, ...]) -> OtaFile:
    """An OtaFile whose header length and total size are computed from its contents."""
    hlen = max(header.computed_header_length(), header.header_length)
    body = sum(_SUBELEMENT.size + len(e.data) for e in elements)
    hdr = replace(header, header_length=hlen, total_image_size=hlen + body)
    return OtaFile(hdr, tuple(elements))


def build_simple(header: OtaHeader, payload: bytes) -> OtaFile:
    """One upgrade-image sub-element: what most vendor files and tests need."""
    return build(header, [SubElement(TAG_UPGRADE_IMAGE, payload)])


def parse(data: bytes) -> OtaFile:
    """Parse a whole OTA file; trailing bytes beyond ``total_image_size`` are an error."""
    hdr = parse_header(data)
    if len(data) < hdr.total_image_size:
        raise OtaFileError(
            f"OTA file truncated: {len(data)} bytes, header says {hdr.total_image_size}"
        )
    if len(data) > hdr.total_image_size:
        raise OtaFileError(
            f"OTA file has {len(data) - hdr.total_image_size} bytes after its total image size"
        )
    pos = hdr.header_length
    elements: list[SubElement] = []
    while pos < hdr.total_image_size:
        if pos + _SUBELEMENT.size > hdr.total_image_size:
            raise OtaFileError(f"OTA sub-element header at offset {pos} is cut off")
        tag, length = _SUBELEMENT.unpack_from(data, pos)
        pos += _SUBELEMENT.size
        if pos + length > hdr.total_image_size:
            raise OtaFileError(
                f"OTA sub-element 0x{tag:04X} at offset {pos - 6} runs past the end of the file"
            )
        elements.append(SubElement(tag, bytes(data[pos : pos + length])))
        pos += length
    return OtaFile(hdr, tuple(elements))


def read_stream(stream: BinaryIO, limit: int = 16 * 1024 * 1024) -> tuple[OtaFile, bytes]:
    """Read an OTA file from a stream: the parsed file and its exact bytes.

    Zigbee images are small (≤ a few hundred KiB: node flash), so holding one whole is
    fine; ``limit`` stops a wrong image from filling the gateway's memory.
    """
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise OtaFileError(f"OTA file larger than {limit} bytes; is this really a Zigbee image?")
    return parse(data), data
