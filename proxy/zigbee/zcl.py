"""ZCL frames of the OTA Upgrade cluster (0x0019), both directions.

Each command is a frozen dataclass; ``encode_frame``/``decode_frame`` add the ZCL
header (frame control, optional manufacturer code, sequence number, command id). The
field layouts follow ZCL rev 8 §11.13 and are checked against zigpy's schemas in
tests/peers/test_zigbee_zigpy.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from ferry.proxy.zigbee.errors import ZclError

CLUSTER_ID = 0x0019

# Status codes (ZCL foundation).
SUCCESS = 0x00
NOT_AUTHORIZED = 0x7E
MALFORMED_COMMAND = 0x80
ABORT = 0x95
INVALID_IMAGE = 0x96
WAIT_FOR_DATA = 0x97
NO_IMAGE_AVAILABLE = 0x98
REQUIRE_MORE_IMAGE = 0x99

# Frame control bits.
FC_CLUSTER_SPECIFIC = 0x01
FC_MANUFACTURER_SPECIFIC = 0x04
FC_SERVER_TO_CLIENT = 0x08
FC_DISABLE_DEFAULT_RESPONSE = 0x10

UPGRADE_TIME_WAIT = 0xFFFFFFFF  # "wait for a later Upgrade command"


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise ZclError(f"{what}: payload is {len(data)} bytes, needs at least {n}")


@dataclass(frozen=True)
class ImageNotify:
    command_id: ClassVar[int] = 0x00
    to_client: ClassVar[bool] = True
    payload_type: int  # 0 jitter; 1 +mfr; 2 +type; 3 +version
    query_jitter: int
    manufacturer_code: int | None = None
    image_type: int | None = None
    new_file_version: int | None = None

    def encode(self) -> bytes:
        out = struct.pack("<BB", self.payload_type, self.query_jitter)
        if self.payload_type >= 1:
            out += struct.pack("<H", self.manufacturer_code or 0)
        if self.payload_type >= 2:
            out += struct.pack("<H", self.image_type or 0)
        if self.payload_type >= 3:
            out += struct.pack("<I", self.new_file_version or 0)
        return out

    @classmethod
    def decode(cls, data: bytes) -> ImageNotify:
        _need(data, 2, "Image Notify")
        ptype, jitter = data[0], data[1]
        _need(data, 2 + (0, 2, 4, 8)[min(ptype, 3)], "Image Notify")
        mfr = struct.unpack_from("<H", data, 2)[0] if ptype >= 1 else None
        itype = struct.unpack_from("<H", data, 4)[0] if ptype >= 2 else None
        ver = struct.unpack_from("<I", data, 6)[0] if ptype >= 3 else None
        return cls(ptype, jitter, mfr, itype, ver)


@dataclass(frozen=True)
class QueryNextImageRequest:
    command_id: ClassVar[int] = 0x01
    to_client: ClassVar[bool] = False
    manufacturer_code: int
    image_type: int
    current_file_version: int
    hardware_version: int | None = None

    def encode(self) -> bytes:
        fc = 1 if self.hardware_version is not None else 0
        out = struct.pack("<BHHI", fc, self.manufacturer_code, self.image_type,
                          self.current_file_version)
        if self.hardware_version is not None:
            out += struct.pack("<H", self.hardware_version)
        return out

    @classmethod
    def decode(cls, data: bytes) -> QueryNextImageRequest:
        _need(data, 9, "Query Next Image Request")
        fc, mfr, itype, ver = struct.unpack_from("<BHHI", data)
        hw = None
        if fc & 1:
            _need(data, 11, "Query Next Image Request")
            (hw,) = struct.unpack_from("<H", data, 9)
        return cls(mfr, itype, ver, hw)


@dataclass(frozen=True)
class QueryNextImageResponse:
    command_id: ClassVar[int] = 0x02
    to_client: ClassVar[bool] = True
    status: int
    manufacturer_code: int | None = None
    image_type: int | None = None
    file_version: int | None = None
    image_size: int | None = None

    def encode(self) -> bytes:
        if self.status != SUCCESS:
            return bytes([self.status])
        return struct.pack("<BHHII", SUCCESS, self.manufacturer_code or 0,
                           self.image_type or 0, self.file_version or 0, self.image_size or 0)

    @classmethod
    def decode(cls, data: bytes) -> QueryNextImageResponse:
        _need(data, 1, "Query Next Image Response")
        if data[0] != SUCCESS:
            return cls(data[0])
        _need(data, 13, "Query Next Image Response")
        return cls(*struct.unpack_from("<BHHII", data))


@dataclass(frozen=True)
class ImageBlockRequest:
    command_id: ClassVar[int] = 0x03
    to_client: ClassVar[bool] = False
    manufacturer_code: int
    image_type: int
    file_version: int
    file_offset: int
    max_data_size: int
    request_node_addr: int | None = None
    min_block_period: int | None = None  # ms

    def encode(self) -> bytes:
        fc = (1 if self.request_node_addr is not None else 0) | (
            2 if self.min_block_period is not None else 0)
        out = struct.pack("<BHHIIB", fc, self.manufacturer_code, self.image_type,
                          self.file_version, self.file_offset, self.max_data_size)
        if self.request_node_addr is not None:
            out += struct.pack("<Q", self.request_node_addr)
        if self.min_block_period is not None:
            out += struct.pack("<H", self.min_block_period)
        return out

    @classmethod
    def decode(cls, data: bytes) -> ImageBlockRequest:
        _need(data, 14, "Image Block Request")
        fc, mfr, itype, ver, off, size = struct.unpack_from("<BHHIIB", data)
        pos = 14
        addr = period = None
        if fc & 1:
            _need(data, pos + 8, "Image Block Request")
            (addr,) = struct.unpack_from("<Q", data, pos)
            pos += 8
        if fc & 2:
            _need(data, pos + 2, "Image Block Request")
            (period,) = struct.unpack_from("<H", data, pos)
        return cls(mfr, itype, ver, off, size, addr, period)


@dataclass(frozen=True)
class ImagePageRequest:
    command_id: ClassVar[int] = 0x04
    to_client: ClassVar[bool] = False
    manufacturer_code: int
    image_type: int
    file_version: int
    file_offset: int
    max_data_size: int
    page_size: int
    response_spacing: int  # ms
    request_node_addr: int | None = None

    def encode(self) -> bytes:
        fc = 1 if self.request_node_addr is not None else 0
        out = struct.pack("<BHHIIBHH", fc, self.manufacturer_code, self.image_type,
                          self.file_version, self.file_offset, self.max_data_size,
                          self.page_size, self.response_spacing)
        if self.request_node_addr is not None:
            out += struct.pack("<Q", self.request_node_addr)
        return out

    @classmethod
    def decode(cls, data: bytes) -> ImagePageRequest:
        _need(data, 18, "Image Page Request")
        fc, mfr, itype, ver, off, size, page, spacing = struct.unpack_from("<BHHIIBHH", data)
        addr = None
        if fc & 1:
            _need(data, 26, "Image Page Request")
            (addr,) = struct.unpack_from("<Q", data, 18)
        return cls(mfr, itype, ver, off, size, page, spacing, addr)


@dataclass(frozen=True)
class ImageBlockResponse:
    command_id: ClassVar[int] = 0x05
    to_client: ClassVar[bool] = True
    status: int
    manufacturer_code: int = 0
    image_type: int = 0
    file_version: int = 0
    file_offset: int = 0
    data: bytes = b""
    current_time: int = 0  # WAIT_FOR_DATA: UTCTime, seconds since 2000-01-01
    request_time: int = 0
    min_block_period: int = 0  # ms

    def encode(self) -> bytes:
        if self.status == SUCCESS:
            if len(self.data) > 255:
                raise ZclError("Image Block Response data longer than 255 bytes")
            return struct.pack("<BHHIIB", SUCCESS, self.manufacturer_code, self.image_type,
                               self.file_version, self.file_offset, len(self.data)) + self.data
        if self.status == WAIT_FOR_DATA:
            return struct.pack("<BIIH", WAIT_FOR_DATA, self.current_time, self.request_time,
                               self.min_block_period)
        return bytes([self.status])

    @classmethod
    def decode(cls, data: bytes) -> ImageBlockResponse:
        _need(data, 1, "Image Block Response")
        status = data[0]
        if status == SUCCESS:
            _need(data, 14, "Image Block Response")
            _, mfr, itype, ver, off, n = struct.unpack_from("<BHHIIB", data)
            _need(data, 14 + n, "Image Block Response")
            return cls(SUCCESS, mfr, itype, ver, off, bytes(data[14 : 14 + n]))
        if status == WAIT_FOR_DATA:
            _need(data, 11, "Image Block Response")
            _, now, req, period = struct.unpack_from("<BIIH", data)
            return cls(WAIT_FOR_DATA, current_time=now, request_time=req,
                       min_block_period=period)
        return cls(status)


@dataclass(frozen=True)
class UpgradeEndRequest:
    command_id: ClassVar[int] = 0x06
    to_client: ClassVar[bool] = False
    status: int
    manufacturer_code: int
    image_type: int
    file_version: int

    def encode(self) -> bytes:
        return struct.pack("<BHHI", self.status, self.manufacturer_code, self.image_type,
                           self.file_version)

    @classmethod
    def decode(cls, data: bytes) -> UpgradeEndRequest:
        _need(data, 9, "Upgrade End Request")
        return cls(*struct.unpack_from("<BHHI", data))


@dataclass(frozen=True)
class UpgradeEndResponse:
    command_id: ClassVar[int] = 0x07
    to_client: ClassVar[bool] = True
    manufacturer_code: int
    image_type: int
    file_version: int
    current_time: int
    upgrade_time: int

    def encode(self) -> bytes:
        return struct.pack("<HHIII", self.manufacturer_code, self.image_type,
                           self.file_version, self.current_time, self.upgrade_time)

    @classmethod
    def decode(cls, data: bytes) -> UpgradeEndResponse:
        _need(data, 16, "Upgrade End Response")
        return cls(*struct.unpack_from("<HHIII", data))


Command = Union[  # noqa: UP007 - used at runtime in isinstance-free dispatch tables
    ImageNotify,
    QueryNextImageRequest,
    QueryNextImageResponse,
    ImageBlockRequest,
    ImagePageRequest,
    ImageBlockResponse,
    UpgradeEndRequest,
    UpgradeEndResponse,
]

_TO_SERVER: dict[int, type[Command]] = {
    c.command_id: c
    for c in (QueryNextImageRequest, ImageBlockRequest, ImagePageRequest, UpgradeEndRequest)
}
_TO_CLIENT: dict[int, type[Command]] = {
    c.command_id: c
    for c in (ImageNotify, QueryNextImageResponse, ImageBlockResponse, UpgradeEndResponse)
}


@dataclass(frozen=True)
class Frame:
    """One ZCL frame of cluster 0x0019: header fields plus the decoded command."""

    tsn: int
    command: Command
    manufacturer_code: int | None = None
    disable_default_response: bool = False


def encode_frame(frame: Frame) -> bytes:
    cmd = frame.command
    fc = FC_CLUSTER_SPECIFIC
    if cmd.to_client:
        fc |= FC_SERVER_TO_CLIENT
    if frame.disable_default_response:
        fc |= FC_DISABLE_DEFAULT_RESPONSE
    head = bytes([fc])
    if frame.manufacturer_code is not None:
        head = bytes([fc | FC_MANUFACTURER_SPECIFIC]) + struct.pack("<H", frame.manufacturer_code)
    return head + bytes([frame.tsn & 0xFF, cmd.command_id]) + cmd.encode()


def decode_frame(data: bytes) -> Frame:
    _need(data, 3, "ZCL frame")
    fc = data[0]
    if fc & 0x03 != FC_CLUSTER_SPECIFIC:
        raise ZclError(f"ZCL frame type {fc & 0x03} is not cluster-specific")
    pos = 1
    mfr = None
    if fc & FC_MANUFACTURER_SPECIFIC:
        _need(data, 5, "ZCL frame")
        (mfr,) = struct.unpack_from("<H", data, 1)
        pos = 3
    tsn, cmd_id = data[pos], data[pos + 1]
    table = _TO_CLIENT if fc & FC_SERVER_TO_CLIENT else _TO_SERVER
    cls = table.get(cmd_id)
    if cls is None:
        side = "server-to-client" if fc & FC_SERVER_TO_CLIENT else "client-to-server"
        raise ZclError(f"unknown OTA {side} command 0x{cmd_id:02X}")
    return Frame(tsn, cls.decode(bytes(data[pos + 2 :])), mfr,
                 bool(fc & FC_DISABLE_DEFAULT_RESPONSE))
