"""The bundle reader: every rejection has its own type; tampering and truncation are
caught; images are checked at their end; the stream is read once without seeking."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.packaging import cpio, devpki, errors, signature
from ferry.packaging.description import Description, ImageEntry, TargetSpec, render_description
from ferry.packaging.keyring import Keyring
from ferry.packaging.limits import Limits
from ferry.packaging.reader import BundleReader
from ferry.packaging.writer import ImageInput, SigningKey, create_bundle


@pytest.fixture(scope="module")
def pki():
    ca_key = devpki.new_key("ec")
    ca = devpki.make_cert("test CA", ca_key, ca=True)
    key = devpki.new_key("ec")
    cert = devpki.make_cert("test signer", key, issuer=(ca, ca_key))
    return SigningKey(key=key, cert=cert), Keyring.from_pem(devpki.cert_pem(ca))


def _entry(name, data, role="rootfs"):
    target = TargetSpec("smp-serial", "mcu", "bin", "1.0", {}) if role == "target" else None
    return ImageEntry(name, len(data), hashlib.sha256(data).hexdigest(), None, role, target=target)


def build(signing, members, *, entries=None, desc_text=None, sig=None, crc=True):
    """A bundle assembled by hand, so tests can break any part of it on purpose."""
    entries = (
        entries
        if entries is not None
        else [_entry(n, d, "rootfs" if i == 0 else "target") for i, (n, d) in enumerate(members)]
    )
    text = desc_text or render_description(Description("1.0", ("hw",), tuple(entries)))
    if sig is None:
        sig = signature.sign(text, signing.key, signing.cert)
    out = io.BytesIO()
    w = cpio.CpioStreamWriter(out)
    w.add_bytes("sw-description", text)
    if sig is not False:
        w.add_bytes("sw-description.sig", sig)
    for name, data in members:
        w.add_bytes(name, data)
    w.finish()
    return out.getvalue()


def read_all(data: bytes, keyring, limits=None) -> dict[str, bytes]:
    reader = BundleReader(io.BytesIO(data), keyring, limits=limits)
    return {e.filename: s.read(1 << 30) + s.read() for e, s in reader.images()}


QUIET = [HealthCheck.function_scoped_fixture]
ROOTFS = bytes(range(256)) * 9 + b"end"
MCU = b"\x01\x02mcu firmware" * 20


@pytest.fixture(scope="module")
def good(pki):
    return build(pki[0], [("rootfs.img", ROOTFS), ("mcu.bin", MCU)])


def test_good_bundle_reads_back(pki, good):
    reader = BundleReader(io.BytesIO(good), pki[1])
    assert reader.signer == "CN=test signer,O=ferry development"
    assert reader.description.rootfs().filename == "rootfs.img"
    assert [t.target.name for t in reader.description.targets()] == ["mcu"]
    got = {e.filename: b"".join(iter(lambda s=s: s.read(100), b"")) for e, s in reader.images()}
    assert got == {"rootfs.img": ROOTFS, "mcu.bin": MCU}


class Trickle(io.RawIOBase):
    """A pipe-like stream: no seek, no tell, short reads of at most 7 bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *_a):
        raise OSError("not seekable")

    def read(self, n=-1):
        n = 7 if n < 0 else min(n, 7)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


def test_reads_non_seekable_stream_with_short_reads(pki, good):
    reader = BundleReader(Trickle(good), pki[1])
    assert {e.filename: s.read(1 << 20) + s.read() for e, s in reader.images()}.keys() == {
        "rootfs.img",
        "mcu.bin",
    }


def test_reads_from_a_real_pipe(pki, good):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write the bundle into the pipe and exit
        os.close(r)
        os.write(w, good)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as fh:
        reader = BundleReader(fh, pki[1])
        reader.verify_all()
    os.waitpid(pid, 0)


def _reject(data, keyring, exc, limits=None):
    with pytest.raises(exc) as info:
        read_all(data, keyring, limits)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_unsigned(pki):
    _reject(build(pki[0], [("rootfs.img", ROOTFS)], sig=False), pki[1], errors.UnsignedBundle)


def test_untrusted_signer(pki):
    other_key = devpki.new_key("ec")
    other = devpki.make_cert("stranger", other_key, ca=True)
    stranger = Keyring.from_pem(devpki.cert_pem(other))
    _reject(build(pki[0], [("rootfs.img", ROOTFS)]), stranger, errors.UntrustedSigner)


def test_bad_signature(pki):
    sig_for_other = signature.sign(b"something else", pki[0].key, pki[0].cert)
    data = build(pki[0], [("rootfs.img", ROOTFS)], sig=sig_for_other)
    _reject(data, pki[1], errors.BadSignature)


def test_garbage_signature(pki):
    data = build(pki[0], [("rootfs.img", ROOTFS)], sig=b"\x30\x03abc")
    _reject(data, pki[1], errors.BadSignature)


def test_wrong_member_order(pki):
    entries = [_entry("rootfs.img", ROOTFS), _entry("mcu.bin", MCU, "target")]
    data = build(pki[0], [("mcu.bin", MCU), ("rootfs.img", ROOTFS)], entries=entries)
    _reject(data, pki[1], errors.WrongMemberOrder)


def test_signature_first_is_wrong_order(pki):
    out = io.BytesIO()
    w = cpio.CpioStreamWriter(out)
    w.add_bytes("sw-description.sig", b"x")
    w.add_bytes("sw-description", b"x")
    w.finish()
    _reject(out.getvalue(), pki[1], errors.WrongMemberOrder)


def test_unlisted_member(pki):
    entries = [_entry("rootfs.img", ROOTFS)]
    data = build(pki[0], [("rootfs.img", ROOTFS), ("extra.bin", MCU)], entries=entries)
    _reject(data, pki[1], errors.UnlistedMember)
    data = build(pki[0], [("evil.bin", MCU)], entries=entries)
    _reject(data, pki[1], errors.UnlistedMember)


def test_missing_member(pki):
    entries = [_entry("rootfs.img", ROOTFS), _entry("mcu.bin", MCU, "target")]
    data = build(pki[0], [("rootfs.img", ROOTFS)], entries=entries)
    _reject(data, pki[1], errors.MissingMember)


def test_size_mismatch(pki):
    entries = [_entry("rootfs.img", ROOTFS)]
    data = build(pki[0], [("rootfs.img", ROOTFS + b"x")], entries=entries)
    _reject(data, pki[1], errors.SizeMismatch)


def test_hash_mismatch(pki):
    entries = [_entry("rootfs.img", ROOTFS)]
    evil = ROOTFS[:-1] + b"X"
    data = build(pki[0], [("rootfs.img", evil)], entries=entries)
    _reject(data, pki[1], errors.HashMismatch)


def test_truncated(pki, good):
    _reject(good[:-600], pki[1], errors.TruncatedBundle)


def test_bad_header(pki, good):
    bad = bytearray(good)
    bad[0:6] = b"070799"
    _reject(bytes(bad), pki[1], errors.BadHeader)
    bad = bytearray(good)
    bad[20] = ord("g")  # a non-hex digit in a header field
    _reject(bytes(bad), pki[1], errors.BadHeader)


def test_bad_name(pki):
    out = io.BytesIO()
    out.write(cpio.encode_header("../etc/passwd", 0, 0, ino=1))
    _reject(out.getvalue(), pki[1], errors.BadMemberName)
    for name in ("a/b", "x..y", "..", ""):
        with pytest.raises(errors.BadMemberName):
            cpio.check_name(name)


def test_over_limit(pki, good):
    _reject(good, pki[1], errors.OverLimit, Limits(max_member_size=1000))
    _reject(good, pki[1], errors.OverLimit, Limits(max_description_size=100))
    _reject(good, pki[1], errors.OverLimit, Limits(max_bundle_size=2000))


def test_trailing_junk(pki, good):
    _reject(good + b"\0" * 10 + b"junk", pki[1], errors.TrailingJunk)
    _reject(good + b"\0" * (70 * 1024), pki[1], errors.TrailingJunk)
    read_all(good + b"\0" * 1024, pki[1])  # zero padding (cpio -B style) is fine


def test_every_error_class_is_distinct():
    classes = [
        errors.UnsignedBundle, errors.BadSignature, errors.UntrustedSigner, errors.ExpiredSigner,
        errors.WrongMemberOrder, errors.UnlistedMember, errors.MissingMember,
        errors.SizeMismatch, errors.HashMismatch, errors.TruncatedBundle, errors.BadHeader,
        errors.BadMemberName, errors.OverLimit, errors.TrailingJunk,
    ]  # fmt: skip
    assert len(set(classes)) == 14
    assert all(issubclass(c, errors.BundleError) for c in classes)


def _member_span(data: bytes, name: str) -> tuple[int, int]:
    """(start, end) of the data of member ``name`` in the archive."""
    raw = name.encode() + b"\0"
    hdr = data.index(b"070702", data.index(raw) - cpio.HEADER_LEN)
    size = int(data[hdr + 54 : hdr + 62], 16)
    start = hdr + cpio.HEADER_LEN + len(raw)
    start += -start % 4
    return start, start + size


def _fix_crc(data: bytearray, name: str) -> None:
    """Recompute a member's cpio check so a flip tests the signature, not the crc."""
    raw = name.encode() + b"\0"
    hdr = bytes(data).index(raw) - cpio.HEADER_LEN
    start, end = _member_span(bytes(data), name)
    data[hdr + 102 : hdr + 110] = b"%08X" % cpio.bytesum(data[start:end])


@pytest.mark.parametrize("fix_crc", [False, True], ids=["raw-flip", "crc-recomputed"])
@pytest.mark.parametrize("member", ["sw-description", "sw-description.sig"])
def test_every_byte_flip_in_description_and_signature_is_rejected(pki, good, member, fix_crc):
    """Every byte with the crc recomputed (so only the signature can catch it); a dense
    sample of raw flips (the crc or the signature catches those)."""
    start, end = _member_span(good, member)
    for pos in range(start, end, 1 if fix_crc else 5):
        bad = bytearray(good)
        bad[pos] ^= 0x01 if pos % 2 else 0x80
        if fix_crc:
            _fix_crc(bad, member)
        with pytest.raises(errors.BundleError):
            read_all(bytes(bad), pki[1])


def test_payload_flips_are_caught_at_the_end_of_that_image(pki, good, cached_verify):
    start, end = _member_span(good, "rootfs.img")
    for pos in range(start, end, 97):
        bad = bytearray(good)
        bad[pos] ^= 0xFF
        reader = BundleReader(io.BytesIO(bytes(bad)), pki[1])
        it = reader.images()
        entry, stream = next(it)
        seen = 0
        with pytest.raises(errors.HashMismatch):
            while chunk := stream.read(256):
                seen += len(chunk)
        assert entry.filename == "rootfs.img"
        assert seen < entry.size  # the consumer never got the whole (bad) image


@pytest.fixture
def cached_verify(monkeypatch):
    """Truncations past the signature all verify the same (description, signature) pair:
    check it once (signature tests cover verify itself), keep every reader check live."""
    import ferry.packaging.reader as reader_module

    seen: dict[tuple[bytes, bytes], object] = {}
    real = reader_module.verify

    def verify(content, sig, keyring):
        key = (content, sig)
        if key not in seen:
            seen[key] = real(content, sig, keyring)
        return seen[key]

    monkeypatch.setattr(reader_module, "verify", verify)


def test_truncation_at_every_offset_is_caught(pki, good, cached_verify):
    end = good.rindex(b"TRAILER!!!") + len("TRAILER!!!\0")
    for cut in range(0, end):
        with pytest.raises(errors.BundleError):
            read_all(good[:cut], pki[1])


@settings(max_examples=150, deadline=None, suppress_health_check=QUIET)
@given(data=st.data())
def test_property_mutations_never_escape_as_other_errors(pki, good, data):
    bad = bytearray(good)
    n = data.draw(st.integers(1, 4))
    for _ in range(n):
        pos = data.draw(st.integers(0, len(bad) - 1))
        bad[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(bad))))
    blob = bytes(bad if cut is None else bad[:cut])
    try:
        got = read_all(blob, pki[1])
    except errors.BundleError:
        return
    # Accepted: then it must be exactly what was signed (padding bytes may differ).
    assert got == {"rootfs.img": ROOTFS, "mcu.bin": MCU}


@settings(max_examples=100, deadline=None, suppress_health_check=QUIET)
@given(junk=st.binary(max_size=400))
def test_property_random_input_is_a_typed_rejection(pki, junk):
    with pytest.raises(errors.BundleError):
        read_all(junk, pki[1])
    with pytest.raises(errors.BundleError):
        read_all(b"070702" + junk, pki[1])


@settings(max_examples=25, deadline=None, suppress_health_check=QUIET)
@given(
    images=st.lists(st.binary(max_size=300), min_size=1, max_size=3),
    chunk=st.integers(1, 64),
)
def test_property_roundtrip_any_payloads(pki, images, chunk):
    members = [("rootfs.img" if i == 0 else f"t{i}.bin", d) for i, d in enumerate(images)]
    blob = build(pki[0], members)
    reader = BundleReader(io.BytesIO(blob), pki[1])
    got = []
    for _e, stream in reader.images():
        got.append(b"".join(iter(lambda s=stream: s.read(chunk), b"")))
    assert got == images


def test_writer_output_reads_back(pki, tmp_path: Path):
    img = tmp_path / "rootfs.img"
    img.write_bytes(os.urandom(5000))
    out = tmp_path / "b.swu"
    desc = create_bundle(
        out, signing=pki[0], version="3", compatible=["hw"],
        images=[ImageInput(path=img, compress=None)],
    )  # fmt: skip
    reader = BundleReader(out.open("rb"), pki[1])
    assert reader.description == desc
    assert [s.read(10000) for _e, s in reader.images()] == [img.read_bytes()]


def test_image_crc_is_checked_when_asked(pki, good):
    bad = bytearray(good)
    hdr = good.index(b"rootfs.img\0") - cpio.HEADER_LEN
    bad[hdr + 109] ^= 0x01  # last digit of the check field
    # By default sha256 alone binds images (the crc is redundant and costly) ...
    assert read_all(bytes(bad), pki[1])["rootfs.img"] == ROOTFS
    # ... and the stricter mode catches the wrong sum, as SWUpdate does.
    _reject(bytes(bad), pki[1], errors.BadHeader, Limits(check_image_crc=True))
    assert read_all(good, pki[1], Limits(check_image_crc=True))["mcu.bin"] == MCU


def test_reads_an_http_response_stream(pki, good):
    """The way the daemon downloads: bytes flow from the socket straight into the reader."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(good)))
            self.end_headers()
            for pos in range(0, len(good), 1000):  # several TCP writes
                self.wfile.write(good[pos : pos + 1000])

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/b.swu"
        with requests.get(url, stream=True, timeout=30) as resp:
            reader = BundleReader(resp.raw, pki[1])
            got = {e.filename: s.read() for e, s in reader.images()}
        assert got == {"rootfs.img": ROOTFS, "mcu.bin": MCU}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("kind", ["zstd", "zlib"])
def test_decompressing_a_tampered_image_raises_a_bundle_error(pki, tmp_path, kind):
    """What the install pipeline does: decompress on top of the checked stream."""
    from ferry.packaging.compression import decompress_stream

    img = tmp_path / "rootfs.img"
    img.write_bytes(os.urandom(2000) * 20)
    out = tmp_path / "b.swu"
    create_bundle(
        out, signing=pki[0], version="1", compatible=["hw"],
        images=[ImageInput(path=img, compress=kind)],
    )  # fmt: skip
    data = bytearray(out.read_bytes())
    _start, end = _member_span(bytes(data), f"rootfs.img.{'zst' if kind == 'zstd' else 'gz'}")
    data[end - 10] ^= 0x55  # near the end: inside the compressed stream's tail
    reader = BundleReader(io.BytesIO(bytes(data)), pki[1])
    ((_entry, stream),) = [next(reader.images())]
    plain = decompress_stream(kind, stream)
    with pytest.raises(errors.BundleError):
        while plain.read(4096):
            pass
