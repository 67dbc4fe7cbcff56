"""Device side of SMP serial framing (the "console" transport of Zephyr's mcumgr).

Written independently of ferry.proxy.smp.framing: table-driven CRC-16/XMODEM, a line
assembler that, like Zephyr's ``mcumgr_serial_process_frag``, decodes each line's base64
on its own and starts over on every ``06 09`` line.
"""

from __future__ import annotations

import base64
import binascii

FIRST = bytes((6, 9))
MORE = bytes((4, 20))


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _table()


def crc_xmodem(data: bytes, crc: int = 0) -> int:
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


def frame_lines(packet: bytes, max_line: int = 127, corrupt_crc: bool = False) -> bytes:
    """Encode one SMP packet as console lines (Zephyr cuts raw bytes per line)."""
    total = len(packet) + 2
    crc = crc_xmodem(packet) ^ (1 if corrupt_crc else 0)
    raw = total.to_bytes(2, "big") + packet + crc.to_bytes(2, "big")
    per_line_raw = ((max_line - 3) // 4) * 3  # raw bytes that fill one line's base64
    out = []
    for i in range(0, len(raw), per_line_raw):
        marker = FIRST if i == 0 else MORE
        out.append(marker + base64.b64encode(raw[i : i + per_line_raw]) + b"\n")
    return b"".join(out)


class LineAssembler:
    """Bytes from the line in, complete (CRC-checked) SMP packets out."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.pending = b""
        self.frame: bytearray | None = None
        self.dropped: list[str] = []

    def push(self, data: bytes) -> list[bytes]:
        self.pending += data
        out = []
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            pkt = self._line(line.rstrip(b"\r"))
            if pkt is not None:
                out.append(pkt)
        if len(self.pending) > 4 * self.max_frame:
            self.pending = b""
        return out

    def _line(self, line: bytes) -> bytes | None:
        if line[:2] == FIRST:
            if self.frame is not None:
                self.dropped.append("new frame before the previous one ended")
            self.frame = bytearray()
        elif line[:2] != MORE or self.frame is None:
            return None  # console text
        try:
            self.frame += binascii.a2b_base64(line[2:], strict_mode=True)
        except binascii.Error:
            self.dropped.append("bad base64")
            self.frame = None
            return None
        if len(self.frame) < 2:
            return None
        want = int.from_bytes(self.frame[:2], "big")
        if want > self.max_frame:
            self.dropped.append(f"frame of {want} bytes exceeds the buffer")
            self.frame = None
            return None
        have = len(self.frame) - 2
        if have < want:
            return None
        body = bytes(self.frame[2:])
        self.frame = None
        if have > want:
            self.dropped.append("frame longer than announced")
            return None
        packet, crc = body[:-2], int.from_bytes(body[-2:], "big")
        if crc_xmodem(packet) != crc:
            self.dropped.append("bad CRC")
            return None
        return packet
