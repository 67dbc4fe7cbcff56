"""OTA file and ZCL frame edge cases ferry must reject with a clear message."""

from __future__ import annotations

import io

import pytest

from ferry.proxy.zigbee import otafile, zcl
from ferry.proxy.zigbee.errors import OtaFileError, ZclError


def _file(**kw: object) -> bytes:
    hdr = otafile.OtaHeader(0x1234, 1, 2, **kw)  # type: ignore[arg-type]
    return otafile.build_simple(hdr, b"payload" * 10).serialize()


def test_roundtrip_with_every_optional_field() -> None:
    data = _file(security_credential_version=1, upgrade_file_destination=0x1122334455667788,
                 min_hardware_version=1, max_hardware_version=9, header_string=b"hi")
    f = otafile.parse(data)
    assert f.header.header_length == 56 + 1 + 8 + 4
    assert f.header.total_image_size == len(data)
    assert f.header.field_control == 7
    assert f.image() == b"payload" * 10
    assert f.serialize() == data
    parsed, raw = otafile.read_stream(io.BytesIO(data))
    assert raw == data and parsed == f


def test_padded_header_is_kept() -> None:
    hdr = otafile.OtaHeader(1, 2, 3, header_length=64)
    data = otafile.build_simple(hdr, b"abc").serialize()
    assert otafile.parse(data).header.header_length == 64
    assert otafile.parse(data).serialize() == data


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: b"\0\0\0\0" + d[4:], "not a Zigbee OTA file"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\0", "after its total image size"),
    (lambda d: d[:30], "too short"),
    (lambda d: d[:56] + b"\0\0\xff\xff\0\0" + d[62:], "runs past the end"),
])
def test_bad_files_are_rejected(mutate, msg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OtaFileError, match=msg):
        otafile.parse(mutate(_file()))


def test_half_hardware_range_is_refused() -> None:
    with pytest.raises(OtaFileError, match="both min and max"):
        otafile.OtaHeader(1, 2, 3, min_hardware_version=1).serialize()


def test_stream_limit() -> None:
    with pytest.raises(OtaFileError, match="larger than"):
        otafile.read_stream(io.BytesIO(_file()), limit=50)


def test_unknown_command_and_short_payloads() -> None:
    with pytest.raises(ZclError, match="unknown OTA client-to-server command 0x09"):
        zcl.decode_frame(b"\x01\x00\x09")
    with pytest.raises(ZclError, match="Upgrade End Response"):
        zcl.decode_frame(b"\x09\x00\x07\x00")
    with pytest.raises(ZclError, match="longer than 255"):
        zcl.encode_frame(zcl.Frame(0, zcl.ImageBlockResponse(zcl.SUCCESS, data=b"x" * 256)))
