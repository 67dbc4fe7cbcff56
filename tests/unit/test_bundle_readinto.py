"""ImageStream.readinto: fills the caller's buffer and hashes it there, with every check
of read(): size and sha256 at the image's end, a bad last chunk raises instead of being
counted, truncation is caught, and streams without readinto (or seek) still work."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from ferry.packaging import cpio, devpki, errors, signature
from ferry.packaging.description import Description, ImageEntry, render_description
from ferry.packaging.keyring import Keyring
from ferry.packaging.limits import Limits
from ferry.packaging.reader import BundleReader
from ferry.packaging.writer import SigningKey

IMAGE = os.urandom(300_001)  # not a multiple of any buffer size used below


@pytest.fixture(scope="module")
def pki():
    ca_key = devpki.new_key("ec")
    ca = devpki.make_cert("test CA", ca_key, ca=True)
    key = devpki.new_key("ec")
    cert = devpki.make_cert("test signer", key, issuer=(ca, ca_key))
    return SigningKey(key=key, cert=cert), Keyring.from_pem(devpki.cert_pem(ca))


def _bundle(signing: SigningKey, data: bytes, listed: bytes | None = None) -> bytes:
    """One rootfs image ``data``; sw-description describes ``listed`` (default: data)."""
    listed = data if listed is None else listed
    entry = ImageEntry("rootfs.img", len(listed), hashlib.sha256(listed).hexdigest(), None,
                       "rootfs")
    text = render_description(Description("1.0", ("hw",), (entry,)))
    out = io.BytesIO()
    w = cpio.CpioStreamWriter(out)
    w.add_bytes("sw-description", text)
    w.add_bytes("sw-description.sig", signature.sign(text, signing.key, signing.cert))
    w.add_bytes("rootfs.img", data)
    w.finish()
    return out.getvalue()


class ReadOnly:
    """Non-seekable, no readinto, short reads: the fallback path of the cpio reader."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        n = 4093 if n < 0 else min(n, 4093)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


class ShortReadinto(io.RawIOBase):
    """Non-seekable raw stream whose readinto returns at most 5000 bytes."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def]
        return self._f.readinto(memoryview(b)[:5000])


def _readinto_all(stream, size: int) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
    """Everything readinto hands out, and how many calls it took."""
    buf = bytearray(size)
    out = bytearray()
    calls = 0
    while n := stream.readinto(memoryview(buf)):
        out += buf[:n]
        calls += 1
    return bytes(out), calls


@pytest.mark.parametrize("wrap", [io.BytesIO, ReadOnly, ShortReadinto])
@pytest.mark.parametrize("bufsize", [1, 4096, 65536, 1 << 20])
def test_readinto_returns_the_image(pki, wrap, bufsize):
    if bufsize == 1 and wrap is not io.BytesIO:
        bufsize = 7  # keep the slow combinations quick
    data = IMAGE[:20_011] if bufsize < 64 else IMAGE
    reader = BundleReader(wrap(_bundle(pki[0], data)), pki[1])
    got = {e.filename: _readinto_all(s, bufsize)[0] for e, s in reader.images()}
    assert got == {"rootfs.img": data}  # and the trailer checked after the loop


@pytest.mark.parametrize("wrap", [io.BytesIO, ReadOnly, ShortReadinto])
def test_readinto_content_and_offsets(pki, wrap):
    blob = _bundle(pki[0], IMAGE)
    reader = BundleReader(wrap(blob), pki[1])
    got = b""
    for _entry, stream in reader.images():
        got, _calls = _readinto_all(stream, 65536)
        assert stream.readinto(bytearray(10)) == 0  # stays at its end
    assert got == IMAGE
    assert reader.offset == len(blob)  # trailer and its padding consumed, nothing more


def test_readinto_with_image_crc_checked(pki):
    limits = Limits(check_image_crc=True)
    reader = BundleReader(io.BytesIO(_bundle(pki[0], IMAGE)), pki[1], limits=limits)
    for _entry, stream in reader.images():
        assert _readinto_all(stream, 10_000)[0] == IMAGE


def test_readinto_bad_last_chunk_raises_instead_of_counting(pki):
    bad = bytearray(IMAGE)
    bad[-1] ^= 0xFF  # only the very last chunk is wrong
    reader = BundleReader(io.BytesIO(_bundle(pki[0], bytes(bad), listed=IMAGE)), pki[1])
    entry, stream = next(reader.images())
    buf = bytearray(65536)
    counted = 0
    with pytest.raises(errors.HashMismatch):
        while n := stream.readinto(buf):
            counted += n
    assert counted < entry.size  # the consumer was never told about the bad chunk
    assert counted == entry.size - entry.size % 65536  # every earlier chunk was handed out


def test_readinto_bad_first_byte_is_caught_at_the_end(pki):
    bad = bytearray(IMAGE)
    bad[0] ^= 0x01
    reader = BundleReader(ShortReadinto(_bundle(pki[0], bytes(bad), listed=IMAGE)), pki[1])
    _entry, stream = next(reader.images())
    with pytest.raises(errors.HashMismatch):
        _readinto_all(stream, 8192)


@pytest.mark.parametrize("wrap", [io.BytesIO, ReadOnly])
def test_readinto_truncated_image(pki, wrap):
    blob = _bundle(pki[0], IMAGE)
    cut = blob.index(IMAGE[:64]) + len(IMAGE) // 2
    reader = BundleReader(wrap(blob[:cut]), pki[1])
    _entry, stream = next(reader.images())
    with pytest.raises(errors.TruncatedBundle):
        _readinto_all(stream, 65536)


def test_readinto_respects_bundle_size_limit(pki):
    blob = _bundle(pki[0], IMAGE)
    limits = Limits(max_bundle_size=len(blob) - len(IMAGE) // 2)
    reader = BundleReader(io.BytesIO(blob), pki[1], limits=limits)
    _entry, stream = next(reader.images())
    with pytest.raises(errors.OverLimit):
        _readinto_all(stream, 65536)


def test_readinto_never_writes_past_the_image(pki):
    """A buffer larger than what is left gets only the image's bytes; the rest of the
    buffer (and the next member's header) are untouched."""
    reader = BundleReader(io.BytesIO(_bundle(pki[0], IMAGE)), pki[1])
    for _entry, stream in reader.images():
        buf = bytearray(b"\xaa" * (len(IMAGE) + 100))
        n = stream.readinto(buf)
        while n < len(IMAGE):
            n += stream.readinto(memoryview(buf)[n:])
        assert n == len(IMAGE)
        assert bytes(buf[:n]) == IMAGE
        assert bytes(buf[n:]) == b"\xaa" * 100
