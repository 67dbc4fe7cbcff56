"""SMP serial framing ("SMP over console"), as Zephyr's UART/shell transports and
MCUboot serial recovery speak it.

A packet (8-byte header + CBOR) travels as ``len(u16 BE) || packet || crc16(u16 BE)``,
base64-encoded and cut into lines: ``06 09`` + chunk + ``\\n`` for the first line,
``04 14`` + chunk + ``\\n`` for the rest. ``len`` counts packet + CRC. The CRC is
CRC-16/XMODEM (poly 0x1021, init 0), which is what ``binascii.crc_hqx(data, 0)`` computes.
A line is at most 127 bytes including the marker and newline, and we cut the base64 text
at multiples of 4 so every line decodes on its own (both styles exist in the field).

The decoder is a push parser: it never blocks, takes whatever bytes the port gave, drops
console text between frames, and reports damaged frames instead of raising, because on a
shared console line a damaged frame is an everyday event that the client recovers from
by timing out and resending.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field

START = b"\x06\x09"
CONTINUE = b"\x04\x14"
LINE_LIMIT = 127  # bytes per line including the 2-byte marker and the newline
MAX_FRAME = 65535  # the length prefix is a u16


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, as mcumgr uses."""
    return binascii.crc_hqx(data, 0)


def chars_per_line(line_limit: int = LINE_LIMIT) -> int:
    return ((line_limit - 3) // 4) * 4


def encode(packet: bytes, line_limit: int = LINE_LIMIT) -> bytes:
    """The bytes to put on the wire for one SMP packet."""
    if len(packet) + 2 > MAX_FRAME:
        raise ValueError(f"SMP packet of {len(packet)} bytes does not fit the length prefix")
    body = struct.pack(">H", len(packet) + 2) + packet + struct.pack(">H", crc16(packet))
    text = base64.b64encode(body)
    step = chars_per_line(line_limit)
    out = bytearray()
    for i in range(0, len(text), step):
        out += START if i == 0 else CONTINUE
        out += text[i : i + step]
        out += b"\n"
    return bytes(out)


def wire_size(packet_len: int, line_limit: int = LINE_LIMIT) -> int:
    """Bytes on the wire for a packet of ``packet_len`` bytes (header + CBOR)."""
    chars = 4 * ((packet_len + 4 + 2) // 3)
    step = chars_per_line(line_limit)
    lines = -(-chars // step)
    return chars + 3 * lines


@dataclass
class Decoder:
    """Feed raw port bytes in, get whole SMP packets out (CRC checked)."""

    max_frame: int = MAX_FRAME
    errors: list[str] = field(default_factory=list)  # why frames were dropped, oldest first
    noise_bytes: int = 0  # console text seen between frames
    _line: bytearray = field(default_factory=bytearray)
    _frame: bytearray | None = None
    _expected: int = 0

    def feed(self, data: bytes) -> list[bytes]:
        packets: list[bytes] = []
        self._line += data
        while True:
            nl = self._line.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._line[:nl])
            del self._line[: nl + 1]
            packet = self._take_line(line.rstrip(b"\r"))
            if packet is not None:
                packets.append(packet)
        if len(self._line) > 4 * self.max_frame:  # a line that never ends: drop it
            self.noise_bytes += len(self._line)
            self._line.clear()
            self._drop("line without newline exceeds the frame limit")
        return packets

    def _drop(self, reason: str) -> None:
        self.errors.append(reason)
        del self.errors[:-20]
        self._frame = None

    def _take_line(self, line: bytes) -> bytes | None:
        # A start marker may follow console text on the same line (no newline before it).
        start = line.find(START)
        cont = line.find(CONTINUE)
        if start >= 0 and (cont < 0 or start < cont):
            self.noise_bytes += start
            if self._frame is not None:
                self._drop("frame cut off by the start of another frame")
            self._frame = bytearray()
            self._expected = 0
            return self._add(line[start + 2 :])
        if cont == 0 and self._frame is not None:
            return self._add(line[2:])
        # Console text, or a continuation without a start: skip it. A log line between
        # two lines of a frame does not spoil the frame (each line carries its marker).
        self.noise_bytes += len(line) + 1
        return None

    def _add(self, chunk: bytes) -> bytes | None:
        assert self._frame is not None
        try:
            self._frame += base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            self._drop("line is not valid base64")
            return None
        frame = self._frame
        if self._expected == 0 and len(frame) >= 2:
            self._expected = struct.unpack(">H", frame[:2])[0]
            if self._expected < 2 + 8 or self._expected > self.max_frame:
                self._drop(f"frame length {self._expected} out of range")
                return None
        if self._expected == 0 or len(frame) < self._expected + 2:
            return None
        if len(frame) > self._expected + 2:
            self._drop("frame longer than its length prefix")
            return None
        packet = bytes(frame[2:-2])
        (crc,) = struct.unpack(">H", frame[-2:])
        self._frame = None
        if crc16(packet) != crc:
            self.errors.append(f"CRC mismatch (got {crc:#06x}, computed {crc16(packet):#06x})")
            return None
        return packet
