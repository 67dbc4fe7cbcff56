"""What every LoRa Alliance application package (TS003, TS004, TS005) shares: command 0x00,
PackageVersionReq/Ans, answered with the package identifier and its version."""

from __future__ import annotations

from dataclasses import dataclass

CID_PACKAGE_VERSION = 0x00


@dataclass(frozen=True)
class PackageVersionAns:
    package_identifier: int
    package_version: int


def package_version_req() -> bytes:
    return bytes([CID_PACKAGE_VERSION])
