"""DFU suffix and DfuSe container codecs (peer-tool checks live in tests/peers)."""

from __future__ import annotations

import struct
import zlib

import pytest

from ferry.proxy.dfu.errors import BadImage, WrongDevice
from ferry.proxy.dfu.files import (
    DfuseTarget,
    Element,
    add_suffix,
    dfu_crc,
    load_image,
    parse_dfuse,
    parse_suffix,
    write_dfuse,
)


def test_crc_is_zlib_crc32_complemented():
    data = b"ferry firmware"
    assert dfu_crc(data) == zlib.crc32(data) ^ 0xFFFFFFFF


def test_suffix_layout_and_round_trip():
    out = add_suffix(b"\x01\x02\x03", 0x1209, 0xDF11, bcd_device=0x0200)
    assert len(out) == 3 + 16
    assert out[-8:-5] == b"UFD" and out[-5] == 16
    assert struct.unpack_from("<HHHH", out, 3) == (0x0200, 0xDF11, 0x1209, 0x0100)
    suffix = parse_suffix(out)
    assert suffix is not None and (suffix.id_vendor, suffix.id_product) == (0x1209, 0xDF11)
    image = load_image(out)
    assert image.kind == "dfu" and image.payload == b"\x01\x02\x03"


def test_raw_file_has_no_suffix():
    assert parse_suffix(b"\x00" * 64) is None
    assert load_image(b"\x00" * 64).kind == "raw"


def test_damaged_file_is_refused_by_crc():
    out = bytearray(add_suffix(b"payload" * 10, 0x1209, 0xDF11))
    out[3] ^= 0x40
    with pytest.raises(BadImage, match="CRC"):
        load_image(bytes(out))


def test_suffix_ids_and_wildcards():
    suffix = parse_suffix(add_suffix(b"x", 0x1209, 0xDF11))
    assert suffix is not None
    suffix.check_ids(0x1209, 0xDF11)
    with pytest.raises(WrongDevice, match=r"1209:df11.*0483:df11"):
        suffix.check_ids(0x0483, 0xDF11)
    anyone = parse_suffix(add_suffix(b"x"))
    assert anyone is not None and anyone.matches(0x0483, 0x1234)


def test_dfuse_container_round_trip():
    targets = [DfuseTarget(0, "Internal Flash", (Element(0x08000000, b"a" * 100),
                                                 Element(0x08010000, b"b" * 7))),
               DfuseTarget(1, "", (Element(0x1FFF0000, b"c"),))]
    out = write_dfuse(targets, 0x0483, 0xDF11)
    assert out[:5] == b"DfuSe"
    assert struct.unpack_from("<I", out, 6)[0] == len(out)  # DFUImageSize includes the suffix
    image = load_image(out)
    assert image.kind == "dfuse" and image.suffix is not None
    assert image.suffix.bcd_dfu == 0x011A
    assert list(image.targets) == targets
    assert image.size == 108


def test_truncated_dfuse_is_refused():
    out = write_dfuse([DfuseTarget(0, "x", (Element(0x08000000, b"a" * 100),))])
    body = out[:-16]
    with pytest.raises(BadImage, match=r"truncated|past the file end"):
        parse_dfuse(body[:-50])
    with pytest.raises(BadImage, match="DfuSe"):
        parse_dfuse(b"NotDfuSe" + body)


def test_declared_format_is_enforced():
    with pytest.raises(BadImage, match="no DFU suffix"):
        load_image(b"\x00" * 40, "dfu")
    assert load_image(add_suffix(b"abc"), "raw").payload == add_suffix(b"abc")
