"""What every LoRa Alliance application package (TS003, TS004, TS005) shares: command 0x00,
PackageVersionReq/Ans, answered with the package identifier and its version."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ferry.proxy.lora.errors import FrameError

CID_PACKAGE_VERSION = 0x00


@dataclass(frozen=True)
class PackageVersionAns:
    package_identifier: int
    package_version: int


def package_version_req() -> bytes:
    return bytes([CID_PACKAGE_VERSION])


# parse(payload, i) -> (command, bytes it takes, its CID included); payload[i] is the CID
Parser = Callable[[bytes, int], tuple[Any, int]]


def parse_commands(payload: bytes, parsers: Mapping[int, Parser], package: str) -> list[Any]:
    """Every command in one uplink of a package: CID + payload, concatenated.

    PackageVersionAns (CID 0x00) is parsed here for every package; an unknown CID or a
    command cut short is a FrameError naming the package (TS003, TS004, TS005).
    """
    out: list[Any] = []
    i = 0
    try:
        while i < len(payload):
            cid = payload[i]
            if cid == CID_PACKAGE_VERSION:
                out.append(PackageVersionAns(payload[i + 1], payload[i + 2]))
                i += 3
                continue
            parse = parsers.get(cid)
            if parse is None:
                raise FrameError(f"unknown {package} uplink CID 0x{cid:02x} in {payload.hex()}")
            command, n = parse(payload, i)
            out.append(command)
            i += n
    except (IndexError, struct.error):
        raise FrameError(f"truncated {package} uplink: {payload.hex()}") from None
    return out
