"""The node side's own codec for cluster 0x0019 frames, written from the ZCL spec
tables and not shared with ferry.proxy, so an encoding mistake on one side shows up as
a failed transfer instead of passing silently."""

from __future__ import annotations

import struct
from typing import Any

# command id -> (name, fixed layout as (field, struct code)...)
CLIENT_TO_SERVER = {
    0x01: "query_next_image",
    0x03: "image_block",
    0x04: "image_page",
    0x06: "upgrade_end",
}
SERVER_TO_CLIENT = {
    0x00: "image_notify",
    0x02: "query_next_image_response",
    0x05: "image_block_response",
    0x07: "upgrade_end_response",
}
ST_SUCCESS = 0x00
ST_ABORT = 0x95
ST_INVALID_IMAGE = 0x96
ST_WAIT_FOR_DATA = 0x97
ST_NO_IMAGE = 0x98


def _header(server_to_client: bool, seq: int, cmd: int) -> bytes:
    frame_control = 0b0000_0001 | (0b0000_1000 if server_to_client else 0)
    return struct.pack("<BBB", frame_control, seq & 0xFF, cmd)


def query_next_image(seq: int, mfr: int, itype: int, version: int,
                     hw: int | None = None) -> bytes:
    body = struct.pack("<BHHI", 0 if hw is None else 1, mfr, itype, version)
    if hw is not None:
        body += struct.pack("<H", hw)
    return _header(False, seq, 0x01) + body


def image_block(seq: int, mfr: int, itype: int, version: int, offset: int, size: int,
                period_ms: int | None = None) -> bytes:
    body = struct.pack("<BHHIIB", 0 if period_ms is None else 2, mfr, itype, version,
                       offset, size)
    if period_ms is not None:
        body += struct.pack("<H", period_ms)
    return _header(False, seq, 0x03) + body


def image_page(seq: int, mfr: int, itype: int, version: int, offset: int, size: int,
               page: int, spacing_ms: int) -> bytes:
    body = struct.pack("<BHHIIBHH", 0, mfr, itype, version, offset, size, page, spacing_ms)
    return _header(False, seq, 0x04) + body


def upgrade_end(seq: int, status: int, mfr: int, itype: int, version: int) -> bytes:
    return _header(False, seq, 0x06) + struct.pack("<BHHI", status, mfr, itype, version)


def parse_from_server(frame: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a server-to-client frame into (command name, fields)."""
    fc = frame[0]
    pos = 3 if fc & 0x04 else 1
    cmd = frame[pos + 1]
    body = frame[pos + 2 :]
    if not fc & 0x08:
        raise ValueError("frame is not server-to-client")
    name = SERVER_TO_CLIENT.get(cmd)
    if name == "image_notify":
        ptype, jitter = body[0], body[1]
        out: dict[str, Any] = {"payload_type": ptype, "jitter": jitter}
        out["length"] = len(body)
        for key, fmt, at, least in (("mfr", "<H", 2, 1), ("itype", "<H", 4, 2),
                                    ("version", "<I", 6, 3)):
            if ptype >= least and len(body) >= at + struct.calcsize(fmt):
                out[key] = struct.unpack_from(fmt, body, at)[0]
        return name, out
    if name == "query_next_image_response":
        if body[0] != ST_SUCCESS:
            return name, {"status": body[0]}
        st, mfr, itype, ver, size = struct.unpack_from("<BHHII", body)
        return name, {"status": st, "mfr": mfr, "itype": itype, "version": ver, "size": size}
    if name == "image_block_response":
        st = body[0]
        if st == ST_SUCCESS:
            _, mfr, itype, ver, off, n = struct.unpack_from("<BHHIIB", body)
            return name, {"status": st, "mfr": mfr, "itype": itype, "version": ver,
                          "offset": off, "data": bytes(body[14 : 14 + n])}
        if st == ST_WAIT_FOR_DATA:
            _, cur, req, period = struct.unpack_from("<BIIH", body)
            return name, {"status": st, "current_time": cur, "request_time": req,
                          "period_ms": period}
        return name, {"status": st}
    if name == "upgrade_end_response":
        mfr, itype, ver, cur, up = struct.unpack_from("<HHIII", body)
        return name, {"mfr": mfr, "itype": itype, "version": ver, "current_time": cur,
                      "upgrade_time": up}
    raise ValueError(f"unknown server-to-client OTA command 0x{cmd:02x}")


def check_ota_file(data: bytes, mfr: int, itype: int, version: int) -> str:
    """What a node's bootloader checks before it accepts a download: '' when fine."""
    if len(data) < 56:
        return "shorter than an OTA header"
    magic, _hv, hlen, _fc, f_mfr, f_type, f_ver, _st = struct.unpack_from("<IHHHHHIH", data)
    (total,) = struct.unpack_from("<I", data, 52)
    if magic != 0x0BEEF11E:
        return "bad OTA magic"
    if (f_mfr, f_type, f_ver) != (mfr, itype, version):
        return "header does not match the offered image"
    if total != len(data):
        return f"total size {total} != downloaded {len(data)}"
    pos = hlen
    found = False
    while pos < total:
        tag, length = struct.unpack_from("<HI", data, pos)
        pos += 6 + length
        found = found or tag == 0
    if pos != total or not found:
        return "sub-elements do not fill the file or no upgrade image"
    return ""
