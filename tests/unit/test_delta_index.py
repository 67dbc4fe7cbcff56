"""The chunk index and its place in a bundle: built, signed, read back; hostile indexes
and descriptions end in one line, a tampered or misplaced index member is refused."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pytest
import zstandard

from ferry.packaging import devpki
from ferry.packaging.chunker import ChunkParams
from ferry.packaging.chunkindex import (
    MAGIC,
    BadChunkIndex,
    encode_index,
    parse_index,
)
from ferry.packaging.compression import decompress_stream
from ferry.packaging.description import parse_description
from ferry.packaging.errors import BadDescription, BundleError, HashMismatch, WrongMemberOrder
from ferry.packaging.keyring import Keyring
from ferry.packaging.reader import BundleReader
from ferry.packaging.writer import ImageInput, SigningKey, create_bundle

P = ChunkParams()
D = hashlib.sha256(b"x").digest()


@pytest.fixture(scope="module")
def pki() -> tuple[SigningKey, Keyring]:
    ca_key = devpki.new_key("ec")
    ca = devpki.make_cert("test CA", ca_key, ca=True)
    key = devpki.new_key("ec")
    cert = devpki.make_cert("test signer", key, issuer=(ca, ca_key))
    return SigningKey(key=key, cert=cert), Keyring.from_pem(devpki.cert_pem(ca))


@pytest.fixture(scope="module")
def bundle(pki: tuple[SigningKey, Keyring], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("delta")
    image = os.urandom(600 << 10) + bytes(1 << 20) + os.urandom(5000)
    (d / "rootfs.img").write_bytes(image)
    create_bundle(d / "b.swu", signing=pki[0], version="2", compatible=["hw"],
                  images=[ImageInput(d / "rootfs.img", "zstd", delta=P)])
    return d / "b.swu", image


def raw_index(entries: list[tuple[int, int, bytes]], *, size: int | None = None,
              count: int | None = None, magic: bytes = MAGIC, window: int = 8) -> bytes:
    head = struct.pack("<8sIIQI", magic, window, P.avg,
                       size if size is not None else sum(e[0] for e in entries),
                       len(entries) if count is None else count)
    body = b"".join(struct.pack("<II32s", *e) for e in entries)
    return zstandard.ZstdCompressor().compress(head + body)


def test_bundle_reads_as_a_plain_zstd_rootfs_and_carries_a_signed_index(
        pki: tuple[SigningKey, Keyring], bundle: tuple[Path, bytes]) -> None:
    path, image = bundle
    reader = BundleReader(io.BytesIO(path.read_bytes()), pki[1])
    rootfs = reader.description.rootfs()
    assert rootfs is not None and rootfs.delta is not None
    for entry, stream in reader.images():
        out = decompress_stream(entry.compressed, stream).read()
        assert out == image  # any zstd decoder reads the chunk frames as one stream
    assert reader.delta_index is not None
    assert hashlib.sha256(reader.delta_index).hexdigest() == rootfs.delta.sha256
    index = parse_index(reader.delta_index, stored_size=rootfs.size,
                        image_size=len(image))
    assert index.image_size == len(image) and index.stored_size == rootfs.size
    assert index.count > 10


def test_tampered_index_member_is_refused(pki: tuple[SigningKey, Keyring],
                                          bundle: tuple[Path, bytes]) -> None:
    data = bytearray(bundle[0].read_bytes())
    pos = data.index(b".cidx\0") + 8  # inside the index member's data
    data[pos] ^= 1
    reader = BundleReader(io.BytesIO(bytes(data)), pki[1])
    with pytest.raises(HashMismatch, match="chunk index"):
        for _e, s in reader.images():
            s.read()


def test_index_after_the_rootfs_is_refused(pki: tuple[SigningKey, Keyring],
                                           bundle: tuple[Path, bytes]) -> None:
    from ferry.packaging.cpio import CpioStreamReader, CpioStreamWriter

    src = CpioStreamReader(io.BytesIO(bundle[0].read_bytes()))
    members = []
    while not (h := src.next_header()).is_trailer:
        members.append((h.name, src.read_member(1 << 30, h.name)))
    members[2], members[3] = members[3], members[2]  # rootfs first, then its index
    out = io.BytesIO()
    w = CpioStreamWriter(out)
    for name, body in members:
        w.add_bytes(name, body)
    w.finish()
    reader = BundleReader(io.BytesIO(out.getvalue()), pki[1])
    with pytest.raises(WrongMemberOrder, match="chunk index"):
        for _e, s in reader.images():
            s.read()


@pytest.mark.parametrize(("data", "why"), [
    (b"", "not a zstd frame"),
    (b"garbage" * 10, "not a zstd frame"),
    (zstandard.ZstdCompressor().compress(b"FERRYCI1"), "shorter than its header"),
    (raw_index([(4096, 100, D)], magic=b"NOTFERRY"), "wrong magic"),
    (raw_index([(4096, 100, D)], window=7), "ferry cuts with 8"),
    (raw_index([(4096, 100, D)], count=2), "bytes for 2 chunks"),
    (raw_index([(4096, 100, D)], count=1 << 30), "over the limit"),
    (raw_index([(4096, 100, D)], size=8192), "add up to 4096"),
    (raw_index([(0, 100, D)]), "chunk 0 is 0 bytes"),
    (raw_index([(P.max_chunk + 4096, 100, D)]), "chunks are 1.."),
    (raw_index([(4096, 0, D)]), "stored in 0 bytes"),
    (raw_index([(4096, 99999, D)]), "stored in 99999 bytes"),
])
def test_hostile_index_is_one_line(data: bytes, why: str) -> None:
    with pytest.raises(BadChunkIndex) as err:
        parse_index(data)
    assert why in str(err.value) and "\n" not in str(err.value)


def test_index_must_agree_with_the_signed_entry() -> None:
    data = encode_index(P, 8192, [(4096, 10, D), (4096, 12, D)])
    assert parse_index(data, stored_size=22, image_size=8192).count == 2
    with pytest.raises(BadChunkIndex, match="member is 23"):
        parse_index(data, stored_size=23)
    with pytest.raises(BadChunkIndex, match="says 8193"):
        parse_index(data, image_size=8193)


def _desc(rootfs_extra: str, target_extra: str = "") -> bytes:
    sha = "ab" * 32
    return f"""software = {{ version = "1"; hardware-compatibility = ["hw"];
      images = ({{ filename = "r.zst"; sha256 = "{sha}"; size = 10; {rootfs_extra} }});
      ferry = {{ targets = ({{ filename = "t.bin"; transport = "dfu"; name = "m";
        format = "bin"; version = "1"; sha256 = "{sha}"; size = 3; {target_extra} }}); }};
    }};""".encode()


GOOD = f'ferry-delta = {{ index = "r.zst.cidx"; sha256 = "{"cd" * 32}"; size = 40; }};'


def test_description_round_trip() -> None:
    from ferry.packaging.description import render_description

    desc = parse_description(_desc('compressed = "zstd"; ' + GOOD))
    rootfs = desc.rootfs()
    assert rootfs is not None and rootfs.delta is not None
    assert rootfs.delta.index == "r.zst.cidx" and rootfs.delta.size == 40
    assert parse_description(render_description(desc)) == desc


@pytest.mark.parametrize(("rootfs", "target", "why"), [
    (GOOD, "", "must be compressed"),
    ('compressed = "zlib"; ' + GOOD, "", "must be compressed"),
    ('compressed = "zstd"; ', 'compressed = "zstd"; ' + GOOD, "only the rootfs"),
    ('compressed = "zstd"; ferry-delta = 3;', "", "must be a group"),
    ('compressed = "zstd"; ferry-delta = { index = "a/b"; sha256 = "' + "cd" * 32
     + '"; size = 4; };', "", "index"),
    ('compressed = "zstd"; ferry-delta = { index = "t.bin"; sha256 = "' + "cd" * 32
     + '"; size = 4; };', "", "shares its name"),
    ('compressed = "zstd"; ferry-delta = { index = "x"; sha256 = "zz"; size = 4; };', "",
     "64 hex"),
    ('compressed = "zstd"; ferry-delta = { index = "x"; sha256 = "' + "cd" * 32
     + '"; size = 0; };', "", "size"),
])
def test_hostile_delta_descriptions_are_one_line(rootfs: str, target: str, why: str) -> None:
    with pytest.raises(BadDescription) as err:
        parse_description(_desc(rootfs, target))
    assert why in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, BundleError)


def test_cli_create_delta_and_inspect_against_a_base(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ferry.packaging.devpki import write_dev_pki

    root = Path(__file__).resolve().parents[2]
    pki = write_dev_pki(tmp_path / "pki")
    old = os.urandom(400 << 10) + bytes(200 << 10)
    new = old[:100_000] + b"changed" + old[100_000:]
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(new)

    def ferry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", "bundle", *args],
                              capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(root)})

    made = ferry("create", "--key", str(pki.signer_key), "--cert", str(pki.signer_cert),
                 "--version", "2", "--compatible", "hw", "--rootfs", "new.img", "--delta",
                 "--delta-chunk", "8", "-o", "b.swu")
    assert made.returncode == 0, made.stderr
    shown = ferry("inspect", "--keyring", str(pki.ca_cert), "--delta-base", "old.img", "b.swu")
    assert shown.returncode == 0, shown.stderr
    assert "chunk index new.img.zst.cidx" in shown.stdout
    line = next(x for x in shown.stdout.splitlines() if "against old.img" in x)
    present, total = (int(v) for v in line.split(": ")[1].split(" chunks")[0].split(" of "))
    assert total - 3 <= present < total  # the chunk around the change, at most its neighbours
    refused = ferry("inspect", "--delta-base", "old.img", "b.swu")
    assert refused.returncode == 1 and "needs --keyring" in refused.stderr
    bad = ferry("create", "--key", str(pki.signer_key), "--cert", str(pki.signer_cert),
                "--version", "2", "--compatible", "hw", "--rootfs", "new.img", "--delta",
                "--delta-chunk", "12", "-o", "c.swu")
    assert bad.returncode == 1 and "power of two" in bad.stderr
