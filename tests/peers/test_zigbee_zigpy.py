"""zigpy (PyPI, the Home Assistant ZHA stack) as an independent peer for the OTA file
format and the cluster 0x0019 command layouts. Never skipped: .ci/deps/zigbee.pip
installs zigpy."""

from __future__ import annotations

import random

import pytest

from ferry.proxy.zigbee import otafile, zcl

try:
    import zigpy.types as t
    from zigpy.ota.image import (
        ElementTagId,
        FieldControl,
        HeaderString,
        OTAImage,
        OTAImageHeader,
        SubElement,
        parse_ota_image,
    )
    from zigpy.zcl import foundation
    from zigpy.zcl.clusters.general import Ota
except ImportError:  # pragma: no cover - CI installs it
    pytest.fail("zigpy missing; run bash .ci/setup (it is in .ci/deps/zigbee.pip)")


def _headers() -> list[otafile.OtaHeader]:
    return [
        otafile.OtaHeader(0x1234, 0x5678, 0x01020304, header_string=b"plain"),
        otafile.OtaHeader(0x115F, 0x0001, 0x00000102, security_credential_version=3),
        otafile.OtaHeader(0x1002, 0x0002, 7, upgrade_file_destination=0x00124B0001020304),
        otafile.OtaHeader(0x1002, 0x0003, 9, min_hardware_version=0x0102,
                          max_hardware_version=0x0300, header_string=b"hw range"),
        otafile.OtaHeader(0x1234, 0x0001, 0xFFFFFFFE, security_credential_version=1,
                          upgrade_file_destination=0xAABBCCDDEEFF0011,
                          min_hardware_version=1, max_hardware_version=2, stack_version=3),
    ]


@pytest.mark.parametrize("hdr", _headers(), ids=lambda h: f"fc{h.field_control}")
def test_ferry_files_parse_with_zigpy_and_rebuild_exact(hdr: otafile.OtaHeader) -> None:
    payload = random.Random(hdr.field_control).randbytes(1500)
    f = otafile.build(hdr, [otafile.SubElement(0, payload),
                            otafile.SubElement(otafile.TAG_PICTURE, b"\x89PNGxx")])
    data = f.serialize()
    img, rest = parse_ota_image(data)
    assert rest == b""
    assert isinstance(img, OTAImage)
    zh = img.header
    assert zh.manufacturer_id == hdr.manufacturer_code
    assert zh.image_type == hdr.image_type
    assert zh.file_version == hdr.file_version
    assert zh.stack_version == hdr.stack_version
    assert zh.header_length == f.header.header_length
    assert zh.image_size == len(data)
    assert zh.security_credential_version == hdr.security_credential_version
    if hdr.upgrade_file_destination is None:
        assert zh.upgrade_file_destination is None
    else:
        assert int.from_bytes(zh.upgrade_file_destination.serialize(), "little") == \
            hdr.upgrade_file_destination
    assert zh.minimum_hardware_version == hdr.min_hardware_version
    assert zh.maximum_hardware_version == hdr.max_hardware_version
    assert [e.tag_id for e in img.subelements] == [0, otafile.TAG_PICTURE]
    assert img.subelements[0].data == payload
    assert img.serialize() == data


@pytest.mark.parametrize("with_opts", [False, True])
def test_zigpy_built_files_parse_with_ferry(with_opts: bool) -> None:
    payload = random.Random(7).randbytes(2048)
    fc = FieldControl(0)
    extra: dict[str, object] = {}
    hlen = 56
    if with_opts:
        fc = (FieldControl.SECURITY_CREDENTIAL_VERSION_PRESENT
              | FieldControl.DEVICE_SPECIFIC_FILE_PRESENT
              | FieldControl.HARDWARE_VERSIONS_PRESENT)
        extra = dict(security_credential_version=2,
                     upgrade_file_destination=t.EUI64.convert("00:12:4b:00:01:02:03:04"),
                     minimum_hardware_version=1, maximum_hardware_version=5)
        hlen = 56 + 1 + 8 + 4
    hdr = OTAImageHeader(
        upgrade_file_id=OTAImageHeader.MAGIC_VALUE, header_version=0x0100,
        header_length=hlen, field_control=fc, manufacturer_id=0x1234, image_type=0x5678,
        file_version=0x01020304, stack_version=2, header_string=HeaderString("zigpy built"),
        image_size=hlen + 6 + len(payload), **extra)
    img = OTAImage(header=hdr, subelements=[
        SubElement(tag_id=ElementTagId.UPGRADE_IMAGE, data=payload)])
    data = img.serialize()
    f = otafile.parse(data)
    assert f.header.manufacturer_code == 0x1234
    assert f.header.image_type == 0x5678
    assert f.header.file_version == 0x01020304
    assert f.header.header_string == b"zigpy built"
    assert f.header.total_image_size == len(data)
    assert f.image() == payload
    if with_opts:
        assert f.header.security_credential_version == 2
        assert f.header.upgrade_file_destination == 0x00124B0001020304
        assert (f.header.min_hardware_version, f.header.max_hardware_version) == (1, 5)
    assert f.serialize() == data


S = foundation.Status


def _server_cmds() -> list[tuple[zcl.Command, str, dict[str, object]]]:
    return [
        (zcl.QueryNextImageRequest(0x1234, 5, 0x10, None), "query_next_image",
         dict(manufacturer_code=0x1234, image_type=5, current_file_version=0x10)),
        (zcl.QueryNextImageRequest(0x1234, 5, 0x10, 0x0203), "query_next_image",
         dict(hardware_version=0x0203)),
        (zcl.ImageBlockRequest(0x1234, 5, 0x11, 4096, 50), "image_block",
         dict(file_offset=4096, maximum_data_size=50)),
        (zcl.ImageBlockRequest(0x1234, 5, 0x11, 50, 64, 0x00124B0001020304, 250),
         "image_block", dict(minimum_block_period=250)),
        (zcl.ImagePageRequest(0x1234, 5, 0x11, 1024, 48, 512, 20), "image_page",
         dict(page_size=512, response_spacing=20, maximum_data_size=48)),
        (zcl.UpgradeEndRequest(zcl.SUCCESS, 0x1234, 5, 0x11), "upgrade_end",
         dict(status=S.SUCCESS, file_version=0x11)),
        (zcl.UpgradeEndRequest(zcl.INVALID_IMAGE, 0x1234, 5, 0x11), "upgrade_end",
         dict(status=S.INVALID_IMAGE)),
    ]


def _client_cmds() -> list[tuple[zcl.Command, str, dict[str, object]]]:
    return [
        (zcl.ImageNotify(0, 100), "image_notify", dict(query_jitter=100)),
        (zcl.ImageNotify(3, 50, 0x1234, 5, 0x11), "image_notify",
         dict(manufacturer_code=0x1234, image_type=5, new_file_version=0x11)),
        (zcl.QueryNextImageResponse(zcl.NO_IMAGE_AVAILABLE), "query_next_image_response",
         dict(status=S.NO_IMAGE_AVAILABLE)),
        (zcl.QueryNextImageResponse(zcl.SUCCESS, 0x1234, 5, 0x11, 262144 + 62),
         "query_next_image_response", dict(image_size=262206, file_version=0x11)),
        (zcl.ImageBlockResponse(zcl.SUCCESS, 0x1234, 5, 0x11, 100, b"x" * 50),
         "image_block_response", dict(file_offset=100, image_data=b"x" * 50)),
        (zcl.ImageBlockResponse(zcl.WAIT_FOR_DATA, current_time=1000, request_time=1010,
                                min_block_period=250),
         "image_block_response", dict(status=S.WAIT_FOR_DATA, current_time=1000,
                                      request_time=1010, minimum_block_period=250)),
        (zcl.ImageBlockResponse(zcl.ABORT), "image_block_response", dict(status=S.ABORT)),
        (zcl.UpgradeEndResponse(0x1234, 5, 0x11, 1000, 1005), "upgrade_end_response",
         dict(current_time=1000, upgrade_time=1005)),
    ]


def _check(obj: object, fields: dict[str, object]) -> None:
    for key, want in fields.items():
        assert getattr(obj, key) == want, key


@pytest.mark.parametrize("cmd,name,fields", _server_cmds() + _client_cmds())
def test_ferry_frames_decode_with_zigpy(cmd: zcl.Command, name: str,
                                        fields: dict[str, object]) -> None:
    raw = zcl.encode_frame(zcl.Frame(tsn=42, command=cmd))
    hdr, payload = foundation.ZCLHeader.deserialize(raw)
    assert hdr.tsn == 42
    assert hdr.command_id == cmd.command_id
    assert hdr.frame_control.is_cluster
    want_dir = (foundation.Direction.Server_to_Client if cmd.to_client
                else foundation.Direction.Client_to_Server)
    assert hdr.direction == want_dir
    defs = Ota.ClientCommandDefs if cmd.to_client else Ota.ServerCommandDefs
    schema = getattr(defs, name).schema
    obj, rest = schema.deserialize(payload)
    assert rest == b""
    _check(obj, fields)


@pytest.mark.parametrize("cmd,name,fields", _server_cmds() + _client_cmds())
def test_zigpy_frames_decode_with_ferry(cmd: zcl.Command, name: str,
                                        fields: dict[str, object]) -> None:
    defs = Ota.ClientCommandDefs if cmd.to_client else Ota.ServerCommandDefs
    zdef = getattr(defs, name)
    # Build the zigpy object from ferry's field values, independent of ferry's encoder.
    kwargs = {k: getattr(obj_field, "value", obj_field) for k, obj_field in
              _zigpy_kwargs(cmd).items()}
    zobj = zdef.schema(**kwargs)
    direction = (foundation.Direction.Server_to_Client if cmd.to_client
                 else foundation.Direction.Client_to_Server)
    hdr = foundation.ZCLHeader.cluster(tsn=7, command_id=zdef.id, direction=direction)
    raw = hdr.serialize() + zobj.serialize()
    frame = zcl.decode_frame(raw)
    assert frame.tsn == 7
    assert frame.command == cmd


def _zigpy_kwargs(cmd: zcl.Command) -> dict[str, object]:
    if isinstance(cmd, zcl.QueryNextImageRequest):
        d: dict[str, object] = dict(
            field_control=1 if cmd.hardware_version is not None else 0,
            manufacturer_code=cmd.manufacturer_code, image_type=cmd.image_type,
            current_file_version=cmd.current_file_version)
        if cmd.hardware_version is not None:
            d["hardware_version"] = cmd.hardware_version
        return d
    if isinstance(cmd, zcl.ImageBlockRequest):
        d = dict(field_control=(1 if cmd.request_node_addr is not None else 0)
                 | (2 if cmd.min_block_period is not None else 0),
                 manufacturer_code=cmd.manufacturer_code, image_type=cmd.image_type,
                 file_version=cmd.file_version, file_offset=cmd.file_offset,
                 maximum_data_size=cmd.max_data_size)
        if cmd.request_node_addr is not None:
            d["request_node_addr"] = t.EUI64(cmd.request_node_addr.to_bytes(8, "little"))
        if cmd.min_block_period is not None:
            d["minimum_block_period"] = cmd.min_block_period
        return d
    if isinstance(cmd, zcl.ImagePageRequest):
        return dict(field_control=0, manufacturer_code=cmd.manufacturer_code,
                    image_type=cmd.image_type, file_version=cmd.file_version,
                    file_offset=cmd.file_offset, maximum_data_size=cmd.max_data_size,
                    page_size=cmd.page_size, response_spacing=cmd.response_spacing)
    if isinstance(cmd, zcl.UpgradeEndRequest):
        return dict(status=S(cmd.status), manufacturer_code=cmd.manufacturer_code,
                    image_type=cmd.image_type, file_version=cmd.file_version)
    if isinstance(cmd, zcl.ImageNotify):
        d = dict(payload_type=cmd.payload_type, query_jitter=cmd.query_jitter)
        if cmd.payload_type >= 3:
            d.update(manufacturer_code=cmd.manufacturer_code, image_type=cmd.image_type,
                     new_file_version=cmd.new_file_version)
        return d
    if isinstance(cmd, zcl.QueryNextImageResponse):
        d = dict(status=S(cmd.status))
        if cmd.status == zcl.SUCCESS:
            d.update(manufacturer_code=cmd.manufacturer_code, image_type=cmd.image_type,
                     file_version=cmd.file_version, image_size=cmd.image_size)
        return d
    if isinstance(cmd, zcl.ImageBlockResponse):
        if cmd.status == zcl.SUCCESS:
            return dict(status=S.SUCCESS, manufacturer_code=cmd.manufacturer_code,
                        image_type=cmd.image_type, file_version=cmd.file_version,
                        file_offset=cmd.file_offset, image_data=cmd.data)
        if cmd.status == zcl.WAIT_FOR_DATA:
            return dict(status=S.WAIT_FOR_DATA, current_time=cmd.current_time,
                        request_time=cmd.request_time, minimum_block_period=cmd.min_block_period)
        return dict(status=S(cmd.status))
    assert isinstance(cmd, zcl.UpgradeEndResponse)
    return dict(manufacturer_code=cmd.manufacturer_code, image_type=cmd.image_type,
                file_version=cmd.file_version, current_time=cmd.current_time,
                upgrade_time=cmd.upgrade_time)


def test_manufacturer_specific_header_matches_zigpy() -> None:
    raw = zcl.encode_frame(zcl.Frame(9, zcl.UpgradeEndRequest(0, 1, 2, 3),
                                     manufacturer_code=0x115F, disable_default_response=True))
    hdr, _ = foundation.ZCLHeader.deserialize(raw)
    assert hdr.manufacturer == 0x115F
    assert hdr.frame_control.is_manufacturer_specific
    assert hdr.frame_control.disable_default_response
    back = zcl.decode_frame(raw)
    assert back.manufacturer_code == 0x115F and back.disable_default_response
