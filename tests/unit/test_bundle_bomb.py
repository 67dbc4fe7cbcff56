"""Decompressed-size caps: a zstd or gzip bomb is stopped at its cap (issue 16).

A small stored image that inflates to gigabytes would fill the data partition while its
stored sha256 is still unchecked (the hash is known only at the stored stream's end). The
capped stream refuses the read that passes the cap; the cap is the image's signed
decompressed-size when it declares one, else the configured Limits.max_decompressed_size.
"""

from __future__ import annotations

import hashlib
import io

import pytest

from ferry.packaging import cpio, devpki, signature
from ferry.packaging.compression import (
    DecompressedOverLimit,
    compress_file,
    decompress_stream,
    output_limit,
)
from ferry.packaging.description import Description, ImageEntry, render_description
from ferry.packaging.errors import BundleError, OverLimit
from ferry.packaging.keyring import Keyring
from ferry.packaging.reader import BundleReader

BOMB_SIZE = 64 << 20  # zeros: a few KiB stored
CAP = 1 << 20


def bomb(kind: str, size: int = BOMB_SIZE) -> bytes:
    out = io.BytesIO()

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buf):  # type: ignore[override]
            n = min(len(buf), self.left)
            buf[:n] = bytes(n)
            self.left -= n
            return n

    compress_file(kind, io.BufferedReader(Zeros()), out)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.fixture(scope="module", params=["zstd", "gzip"])
def packed(request):
    return request.param, bomb(request.param)


def drain_readinto(stream, size: int = 256 << 10) -> int:
    buf = bytearray(size)
    total = 0
    while n := stream.readinto(buf):
        total += n
    return total


def test_bomb_is_stopped_at_the_cap_with_readinto(packed):
    kind, blob = packed
    assert len(blob) < BOMB_SIZE // 100  # it is a bomb
    stream = decompress_stream(kind, io.BytesIO(blob), max_output=CAP, what="image 'x.gz'")
    with pytest.raises(DecompressedOverLimit, match=r"image 'x\.gz' decompresses to more than"):
        drain_readinto(stream)
    # It stopped at the cap, not after inflating everything.
    assert stream.produced == CAP + 1  # type: ignore[attr-defined]


def test_bomb_is_stopped_at_the_cap_with_read(packed):
    kind, blob = packed
    stream = decompress_stream(kind, io.BytesIO(blob), max_output=CAP)
    got = 0
    with pytest.raises(DecompressedOverLimit) as info:
        while chunk := stream.read(300_000):
            got += len(chunk)
    assert got <= CAP
    assert isinstance(info.value, OverLimit) and isinstance(info.value, BundleError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["zstd", "gzip", None])
def test_image_of_exactly_the_cap_passes(kind):
    data = bytes(range(256)) * 4096  # 1 MiB
    if kind is None:
        blob = data
    else:
        out = io.BytesIO()
        compress_file(kind, io.BytesIO(data), out)
        blob = out.getvalue()
    stream = decompress_stream(kind, io.BytesIO(blob), max_output=len(data))
    assert drain_readinto(stream, 100_000) == len(data)
    over = decompress_stream(kind, io.BytesIO(blob), max_output=len(data) - 1)
    with pytest.raises(DecompressedOverLimit):
        drain_readinto(over, 100_000)


def test_output_limit_prefers_the_signed_size_and_refuses_one_over_the_cap():
    assert output_limit(None, None) is None
    assert output_limit(None, 0) is None
    assert output_limit(None, 5000) == 5000
    assert output_limit(3000, 5000) == 3000
    assert output_limit(3000, None) == 3000
    with pytest.raises(DecompressedOverLimit, match="declares 6000 bytes"):
        output_limit(6000, 5000)


def test_signed_bundle_whose_image_lies_about_decompressed_size():
    """End to end through BundleReader: a genuinely signed description that declares
    1 MiB for an image that inflates to 64 MiB is stopped at 1 MiB + 1."""
    ca_key = devpki.new_key("ec")
    ca = devpki.make_cert("CA", ca_key, ca=True)
    key = devpki.new_key("ec")
    cert = devpki.make_cert("signer", key, issuer=(ca, ca_key))
    blob = bomb("zstd")
    entry = ImageEntry(
        "payload.bin.zst", len(blob), hashlib.sha256(blob).hexdigest(), "zstd", "rootfs",
        decompressed_size=CAP,
    )
    text = render_description(Description("1", ("hw",), (entry,)))
    out = io.BytesIO()
    writer = cpio.CpioStreamWriter(out)
    writer.add_bytes("sw-description", text)
    writer.add_bytes("sw-description.sig", signature.sign(text, key, cert))
    writer.add_bytes(entry.filename, blob)
    writer.finish()
    reader = BundleReader(io.BytesIO(out.getvalue()), Keyring.from_pem(devpki.cert_pem(ca)))
    for image, stored in reader.images():
        limit = output_limit(image.decompressed_size, 16 << 20)
        plain = decompress_stream(image.compressed, stored, max_output=limit,
                                  what=f"image {image.filename!r}")
        with pytest.raises(DecompressedOverLimit, match=r"'payload\.bin\.zst'.*1048576"):
            drain_readinto(plain)
        break
