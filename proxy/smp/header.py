"""The 8-byte SMP header (all fields big-endian) and the command numbers ferry uses."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct(">BBHHBB")


class Op(IntEnum):
    READ = 0
    READ_RSP = 1
    WRITE = 2
    WRITE_RSP = 3


class Group(IntEnum):
    OS = 0
    IMAGE = 1


# (group, command id)
ECHO = (Group.OS, 0)
RESET = (Group.OS, 5)
PARAMS = (Group.OS, 6)
IMAGE_STATE = (Group.IMAGE, 0)
IMAGE_UPLOAD = (Group.IMAGE, 1)
IMAGE_ERASE = (Group.IMAGE, 5)


@dataclass(frozen=True)
class Header:
    op: int
    length: int
    group: int
    seq: int
    command: int
    version: int = 1  # SMP v2 (bits 4:3 of byte 0)
    flags: int = 0

    def pack(self) -> bytes:
        first = ((self.version & 0x3) << 3) | (self.op & 0x7)
        return HEADER.pack(first, self.flags, self.length, self.group, self.seq, self.command)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if len(data) < HEADER.size:
            raise ValueError(f"SMP packet of {len(data)} bytes is shorter than its header")
        first, flags, length, group, seq, command = HEADER.unpack_from(data)
        return cls(op=first & 0x7, length=length, group=group, seq=seq, command=command,
                   version=(first >> 3) & 0x3, flags=flags)
