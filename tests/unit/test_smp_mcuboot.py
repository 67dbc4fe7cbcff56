"""MCUboot image parsing and checks (the peers file checks imgtool-made images)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ferry.proxy import mcuboot
from ferry.sim.mcu import image as sim_image


def test_parse_header_and_hash() -> None:
    data = sim_image.build((2, 3, 4, 5), b"\x55" * 1000)
    img = mcuboot.verify_hash(data)
    assert img.version == mcuboot.Version(2, 3, 4, 5)
    assert str(img.version) == "2.3.4+5"
    assert (img.hdr_size, img.img_size, img.protect_tlv_size) == (0x200, 1000, 0)
    assert img.hash == hashlib.sha256(data[: 0x200 + 1000]).digest()
    assert img.tlv_end == len(data)


def test_corrupt_payload_is_refused() -> None:
    data = bytearray(sim_image.build((1, 0, 0, 0), b"\x55" * 1000))
    data[0x300] ^= 1
    with pytest.raises(mcuboot.ImageError, match="corrupt"):
        mcuboot.verify_hash(bytes(data))


def test_truncated_and_foreign_files() -> None:
    data = sim_image.build((1, 0, 0, 0), b"\x55" * 1000)
    with pytest.raises(mcuboot.ImageError, match="truncated"):
        mcuboot.parse(data[:800])
    with pytest.raises(mcuboot.ImageError, match="magic"):
        mcuboot.parse(b"\x7fELF" + bytes(100))
    no_sha = data[: 0x200 + 1000] + struct.pack("<HH", 0x6907, 4)
    with pytest.raises(mcuboot.ImageError, match="no SHA256"):
        mcuboot.verify_hash(no_sha)


@pytest.mark.parametrize(("a", "b"), [("1.2.3", "1.2.4"), ("1.2.3+1", "1.2.3+2"),
                                       ("1.9.0", "1.10.0"), ("1.2.3", "1.2.3.1")])
def test_version_order(a: str, b: str) -> None:
    assert mcuboot.Version.parse(a) < mcuboot.Version.parse(b)


def test_version_forms_agree() -> None:
    assert mcuboot.Version.parse("1.2.3.4") == mcuboot.Version.parse("1.2.3+4")
    with pytest.raises(mcuboot.ImageError):
        mcuboot.Version.parse("one.two")
