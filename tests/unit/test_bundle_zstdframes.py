"""zstd frame boundaries (RFC 8878 §3.1) against frames libzstd and the zstd CLI write."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
import zstandard

from ferry.packaging import compression
from ferry.packaging.compression import DecompressError, compress_file, decompress_stream
from ferry.packaging.zstdframes import FrameError, FrameSplitter


def frames_of(blob: bytes) -> tuple[list[int], bytes]:
    """Frame end offsets and the bytes handed out, through small reads."""
    sp = FrameSplitter(io.BufferedReader(io.BytesIO(blob), 4096))  # type: ignore[arg-type]
    ends, out = [], bytearray()
    while (f := sp.next_frame()) is not None:
        while chunk := f.read(777):
            out += chunk
        ends.append(sp.consumed)
    return ends, bytes(out)


def test_every_header_variant_libzstd_writes() -> None:
    pieces = [os.urandom(200_000), b"a" * 300_000, b"", b"xyz" * 50_000, b"q"]
    blob, ends = b"", []
    for i, p in enumerate(pieces):
        c = zstandard.ZstdCompressor(level=1 + i, write_checksum=i % 2 == 0,
                                     write_content_size=i != 1, write_dict_id=False)
        blob += c.compress(p)
        ends.append(len(blob))
    # a skippable frame (user data) between them, as some tools add
    blob += (0x184D2A5E).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"ferry!"
    ends.append(len(blob))
    blob += zstandard.ZstdCompressor(level=3).compress(b"tail" * 10_000)
    ends.append(len(blob))
    got_ends, out = frames_of(blob)
    assert got_ends == ends and out == blob


def test_frames_from_the_zstd_cli(tmp_path: Path) -> None:
    """`zstd` concatenated files and a --long/--ultra frame: boundaries at the joins."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(150_000) + bytes(400_000))
    b.write_bytes(b"ferry" * 90_000)
    za = subprocess.run(["zstd", "-q", "-c", "-19", str(a)], capture_output=True,
                        check=True).stdout
    zb = subprocess.run(["zstd", "-q", "-c", "--no-check", "-3", str(b)], capture_output=True,
                        check=True).stdout
    ends, out = frames_of(za + zb)
    assert ends == [len(za), len(za) + len(zb)] and out == za + zb


@pytest.mark.parametrize("cut", [2, 4, 5, 9, 14, -5, -1])
def test_truncated_streams_are_errors(cut: int) -> None:
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(50_000))
    with pytest.raises(FrameError, match="truncated"):
        frames_of(blob[:cut])


def test_not_zstd_is_an_error() -> None:
    with pytest.raises(FrameError, match="not zstd"):
        frames_of(b"\x1f\x8b\x08\x00" + bytes(100))


def test_reserved_block_type_is_an_error() -> None:
    blob = bytearray(zstandard.ZstdCompressor(write_content_size=False,
                                              write_checksum=False).compress(b"x" * 1000))
    header_len = 4 + 1 + 1  # magic, descriptor, window descriptor
    blob[header_len] |= 0b110  # block type 3
    with pytest.raises(FrameError, match="reserved"):
        frames_of(bytes(blob))


def test_ferry_writes_one_frame_per_frame_size_and_any_decoder_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "FRAME_SIZE", 1 << 20)
    data = os.urandom(1 << 20) + bytes(2 << 20) + os.urandom(12_345)
    out = io.BytesIO()
    compress_file("zstd", io.BytesIO(data), out)
    blob = out.getvalue()
    (tmp_path / "f.zst").write_bytes(blob)
    cli = subprocess.run(["zstd", "-q", "-d", "-c", str(tmp_path / "f.zst")],
                         capture_output=True, check=True).stdout
    assert cli == data  # the zstd CLI reads the concatenated frames as one stream
    assert zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(blob), read_across_frames=True).read() == data
    seen: list[tuple[int, int]] = []
    stream = decompress_stream("zstd", io.BufferedReader(io.BytesIO(blob)),  # type: ignore[arg-type]
                               on_frame=lambda c, d: seen.append((c, d)))
    assert stream.read() == data
    assert [d for _, d in seen] == [1 << 20, 2 << 20, 3 << 20, len(data)]
    assert seen[-1][0] == len(blob)
    # each boundary is a place to start decoding from, with nothing before it
    c, d = seen[1]
    assert decompress_stream("zstd", io.BytesIO(blob[c:])).read() == data[d:]


def test_corrupt_frame_data_is_a_decompress_error() -> None:
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(9000)))
    blob[-2] ^= 0xFF  # the content checksum
    with pytest.raises(DecompressError):
        decompress_stream("zstd", io.BytesIO(bytes(blob))).read()
