"""libconfig subset, sw-description model, newc/crc primitives and compression."""

from __future__ import annotations

import contextlib
import io
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.packaging import cpio, libconfig
from ferry.packaging.compression import compress_file, decompress_stream
from ferry.packaging.description import (
    Description,
    ImageEntry,
    TargetSpec,
    parse_description,
    render_description,
)
from ferry.packaging.errors import BadDescription, BundleError

SHA = "ab" * 32

SWUPDATE_STYLE = """
/* as SWUpdate's documentation writes it */
software =
{
    version = "0.1.0";
    description = "Firmware update for XXXXX Project";
    hardware-compatibility: [ "1.0", "1.2", "1.3"];
    images: (
        {
            filename = "rootfs.ext4.gz";
            device = "/dev/mmcblk0p1";
            type = "raw";
            compressed = "zlib";
            sha256 = "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB";
            size = 0x10;   // ferry's key
            installed-directly = true;
        }
    );
    ferry: {
        targets: (
            { filename = "app.bin"; sha256 = "SHA_HEX"; size = 4000000000L;
              transport = "smp-serial"; name = "mcu"; format = "mcuboot";
              version = "1.2" ".3"; selector = { image_id = "0"; }; },
        );
    };
};
""".replace("SHA_HEX", SHA)


def test_parses_swupdate_style_description():
    desc = parse_description(SWUPDATE_STYLE.encode())
    assert desc.version == "0.1.0"
    assert desc.compatible == ("1.0", "1.2", "1.3")
    rootfs = desc.rootfs()
    assert rootfs is not None and rootfs.size == 16 and rootfs.compressed == "zlib"
    assert rootfs.sha256 == SHA.lower() and rootfs.device == "/dev/mmcblk0p1"
    (target,) = desc.targets()
    assert target.size == 4_000_000_000  # L suffix: 64-bit
    assert target.target == TargetSpec("smp-serial", "mcu", "mcuboot", "1.2.3", {"image_id": "0"})


def test_render_roundtrip_and_large_sizes_get_l_suffix():
    desc = Description(
        "2.0",
        ("hw-a", "hw-b"),
        (
            ImageEntry("r.img.zst", 2**32 - 1, SHA, "zstd", "rootfs", decompressed_size=2**33),
            ImageEntry(
                "t.bin", 7, SHA, None, "target",
                target=TargetSpec("dfu", "radio", "dfu", "3", {"vid": "0x1234"}),
            ),
        ),
    )  # fmt: skip
    text = render_description(desc)
    assert b"size = 4294967295L;" in text and b'hardware-compatibility = ["hw-a", "hw-b"];' in text
    assert parse_description(text) == desc


@pytest.mark.parametrize(
    "text,match",
    [
        ("software = { version = 1; images = (); };", "version"),
        ('software = { version = "1"; };', "no images"),
        ('software = { version = "1"; scripts = ({filename="x";}); };', "scripts"),
        ('software = { version = "1"; images = ({ filename = "a/b"; }); };', "a/b"),
        ('software = { version = "1"; images = ({ filename = "a"; sha256 = "x"; size = 1; }); };',
         "sha256"),
        ('software = { version = "1"; images = ({ filename = "a"; sha256 = "' + SHA + '"; }); };',
         "size"),
        ('software = { version = "1"; version = "2"; };', "duplicate"),
        ('software = { version = "1" ', "expected"),
        ('@include "x"', "include"),
        ("software = { version = \"1\\q\"; };", "escape"),
    ],
)  # fmt: skip
def test_bad_descriptions_are_typed(text, match):
    with pytest.raises(BadDescription, match=match):
        parse_description(text.encode())


_names = st.from_regex(r"[a-z][-a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n not in ("true", "false")
)
_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(_names, inner, max_size=3),
    ),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(doc=st.dictionaries(_names, _values, max_size=4))
def test_property_libconfig_roundtrip(doc):
    assert libconfig.loads(libconfig.dumps(doc)) == doc


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_property_libconfig_garbage_is_typed(text):
    with contextlib.suppress(BadDescription):
        libconfig.loads(text)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200_000), start=st.integers(0, 2**32 - 1))
def test_property_bytesum_matches_plain_sum(data, start):
    assert cpio.bytesum(data, start) == (start + sum(data)) & 0xFFFFFFFF


def test_bytesum_worst_case_chunks():
    assert cpio.bytesum(b"\xff" * 200_000) == 255 * 200_000
    assert cpio.bytesum(b"\xff" * 65000) == 255 * 65000


def test_header_layout_matches_newc_crc():
    head = cpio.encode_header("abc", 5, 0x1F4, ino=7)
    assert head.startswith(b"070702" + b"%08X" % 7 + b"%08X" % 0o100644)
    assert len(head) % 4 == 0 and head[110:114] == b"abc\0"
    assert head[54:62] == b"00000005" and head[102:110] == b"000001F4"


@pytest.mark.parametrize("kind", ["zstd", "zlib"])
def test_compression_roundtrip_streams(kind):
    payload = bytes(range(256)) * 5000
    packed = io.BytesIO()
    compress_file(kind, io.BytesIO(payload), packed)
    packed.seek(0)
    out = decompress_stream(kind, packed)
    got = b"".join(iter(lambda: out.read(4096), b""))
    assert got == payload


def test_gzip_output_is_readable_by_zlib():
    packed = io.BytesIO()
    compress_file("zlib", io.BytesIO(b"hello" * 100), packed)
    assert zlib.decompress(packed.getvalue(), 31) == b"hello" * 100


@pytest.mark.parametrize("kind", ["zstd", "zlib"])
def test_corrupt_compressed_data_is_a_bundle_error(kind):
    packed = io.BytesIO()
    compress_file(kind, io.BytesIO(bytes(range(256)) * 400), packed)
    bad = bytearray(packed.getvalue())
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(BundleError):
        out = decompress_stream(kind, io.BytesIO(bytes(bad)))
        while out.read(4096):
            pass


def test_sniff_format_reads_image_headers(tmp_path):
    import struct

    from ferry.packaging.writer import sniff_format, sniff_selector

    mcuboot = tmp_path / "a.bin"
    mcuboot.write_bytes(
        struct.pack("<IIHHII", 0x96F3B83D, 0, 32, 0, 8, 0) + struct.pack("<BBHI", 2, 0, 1, 7)
    )
    assert sniff_format(mcuboot) == ("mcuboot", "2.0.1+7")
    ota = tmp_path / "b.ota"
    header = struct.pack("<IHHHHHI", 0x0BEEF11E, 0x0100, 56, 0, 0x1234, 0x0001, 0x00000042)
    ota.write_bytes(header + b"\0" * 40)
    assert sniff_format(ota) == ("zigbee-ota", "0x00000042")
    assert sniff_selector(ota) == {"manufacturer": "0x1234", "image_type": "0x0001"}
    assert sniff_selector(mcuboot) == {}
    dfuse = tmp_path / "c.dfu"
    dfuse.write_bytes(b"DfuSe\x01" + b"\0" * 20)
    assert sniff_format(dfuse) == ("dfuse", None)
    plain = tmp_path / "d.dfu"
    plain.write_bytes(b"\x00" * 30)
    assert sniff_format(plain) == ("dfu", None)
    other = tmp_path / "e.bin"
    other.write_bytes(b"\x01" * 3)
    assert sniff_format(other) == ("bin", None)


@pytest.mark.parametrize("level", [None, 3, 19])
def test_zstd_frames_ferry_writes_need_at_most_a_2_mib_window(level: int | None) -> None:
    import zstandard

    data = bytes(range(256)) * (12 << 12)  # 12 MiB: more than any window
    out = io.BytesIO()
    compress_file("zstd", io.BytesIO(data), out, level=level)
    params = zstandard.get_frame_parameters(out.getvalue()[:18])
    assert params.window_size <= 2 << 20 and params.has_checksum
    assert decompress_stream("zstd", io.BytesIO(out.getvalue())).read() == data


def test_zstd_frames_with_a_bigger_window_are_still_read() -> None:
    import zstandard

    data = b"ferry " * (3 << 20)
    cctx = zstandard.ZstdCompressor(level=19)  # 8 MiB window, as `zstd -19` writes
    blob = cctx.compress(data)
    assert decompress_stream("zstd", io.BytesIO(blob)).read() == data
