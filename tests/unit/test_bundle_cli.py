"""`ferry bundle create|verify|inspect|dev-pki` end to end on small files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import pytest

from ferry.daemon.cli.main import main
from ferry.packaging.compression import decompress_stream
from ferry.packaging.keyring import load_keyring
from ferry.packaging.reader import BundleReader


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    assert main(["bundle", "dev-pki", str(d)]) == 0
    assert oct((d / "signer.key").stat().st_mode & 0o777) == "0o600"
    return d


def _create(pki: Path, out: Path, *extra: str) -> int:
    return main(
        ["bundle", "create", "--key", str(pki / "signer.key"), "--cert", str(pki / "signer.pem"),
         "-o", str(out), *extra]
    )  # fmt: skip


def _mcuboot_image(path: Path) -> bytes:
    header = struct.pack("<IIHHII", 0x96F3B83D, 0, 32, 0, 64, 0) + struct.pack("<BBHI", 1, 2, 3, 0)
    data = header.ljust(32, b"\0") + os.urandom(64)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("compress", ["zstd", "gzip", "none"])
def test_create_verify_inspect(pki, tmp_path, capsys, compress):
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(os.urandom(3000) + b"\0" * 50_000)
    mcu = tmp_path / "app.signed.bin"
    mcu_bytes = _mcuboot_image(mcu)
    out = tmp_path / "b.swu"
    assert _create(
        pki, out, "--version", "1.4.0", "--compatible", "gw-rev2", "--compatible", "gw-rev3",
        "--rootfs", str(rootfs), "--compress", compress, "--target", f"smp-serial:sensor={mcu}",
    ) == 0  # fmt: skip
    assert main(["bundle", "verify", "--keyring", str(pki / "ca.pem"), str(out)]) == 0
    assert "OK: version 1.4.0" in capsys.readouterr().out
    assert main(["bundle", "inspect", "--json", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "1.4.0" and doc["compatible"] == ["gw-rev2", "gw-rev3"]
    assert doc["signer"] == "CN=ferry dev signer,O=ferry development"
    assert doc["signature_verified"] is False
    rootfs_doc, mcu_doc = doc["images"]
    expected = {"zstd": "zstd", "gzip": "zlib", "none": "none"}[compress]
    assert rootfs_doc["role"] == "rootfs" and rootfs_doc["compression"] == expected
    assert mcu_doc["target"] == {
        "transport": "smp-serial", "name": "sensor", "format": "mcuboot", "version": "1.2.3",
        "selector": {},
    }  # fmt: skip
    # Streams decompress back to the inputs, and the recorded hashes are of stored bytes.
    reader = BundleReader(out.open("rb"), load_keyring(pki / "ca.pem"))
    for entry, stream in reader.images():
        raw = stream.read()
        assert hashlib.sha256(raw).hexdigest() == entry.sha256 and len(raw) == entry.size
        plain = decompress_stream(entry.compressed, io.BytesIO(raw)).read()
        assert plain == (rootfs.read_bytes() if entry.role == "rootfs" else mcu_bytes)
        if entry.compressed:
            assert entry.decompressed_sha256 == hashlib.sha256(plain).hexdigest()
    # Text output names every promised field.
    assert main(["bundle", "inspect", "--keyring", str(pki / "ca.pem"), str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("version:    1.4.0", "gw-rev2", "verified", "smp-serial:sensor", "sha256 "):
        assert word in text
    # No temporary files are left next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.signed.bin", "b.swu", "rootfs.ext4"]


def test_verify_failure_exits_nonzero_with_reason(pki, tmp_path, capsys):
    rootfs = tmp_path / "r.img"
    rootfs.write_bytes(b"x" * 5000)
    out = tmp_path / "b.swu"
    assert _create(pki, out, "--version", "1", "--compatible", "hw", "--rootfs", str(rootfs),
                   "--compress", "none") == 0  # fmt: skip
    data = bytearray(out.read_bytes())
    data[data.index(b"x" * 100) + 50] = ord("y")
    out.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["bundle", "verify", "--keyring", str(pki / "ca.pem"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ferry: image 'r.img': sha256") and err.count("\n") == 1


def test_recipe(pki, tmp_path, capsys):
    (tmp_path / "rootfs.img").write_bytes(b"r" * 1000)
    (tmp_path / "radio.bin").write_bytes(b"z" * 100)
    recipe = tmp_path / "bundle.toml"
    recipe.write_text(
        'version = "9.1"\ncompatible = ["gw"]\ncompress = "gzip"\n'
        '[rootfs]\nfile = "rootfs.img"\ndevice = "/dev/mmcblk0p2"\n'
        '[[target]]\ntransport = "dfu"\nname = "radio"\nfile = "radio.bin"\nformat = "dfu"\n'
        'version = "4.0"\ncompress = "none"\nselector = { vid_pid = "1234:5678" }\n'
    )
    out = tmp_path / "r.swu"
    assert _create(pki, out, "--recipe", str(recipe)) == 0
    capsys.readouterr()
    assert main(["--json", "bundle", "inspect", str(out)]) == 0  # global --json works too
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "9.1"
    assert doc["images"][0]["device"] == "/dev/mmcblk0p2"
    assert doc["images"][0]["compression"] == "zlib"
    assert doc["images"][1]["compression"] == "none"
    assert doc["images"][1]["target"]["selector"] == {"vid_pid": "1234:5678"}
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "1"\ncolour = "red"\n')
    assert _create(pki, out, "--recipe", str(bad)) == 1
    assert "unknown key 'colour'" in capsys.readouterr().err


def test_create_refuses_bad_input(pki, tmp_path, capsys):
    assert _create(pki, tmp_path / "o.swu", "--version", "1", "--compatible", "hw") == 1
    assert "rootfs image or at least one --target" in capsys.readouterr().err
    assert _create(pki, tmp_path / "o.swu", "--version", "1", "--compatible", "hw",
                   "--target", "nonsense") == 1  # fmt: skip
    assert "TRANSPORT:NAME=FILE" in capsys.readouterr().err
    assert not (tmp_path / "o.swu").exists()


def test_verify_from_stdin_pipe(pki, tmp_path, monkeypatch, capsys):
    (tmp_path / "r.img").write_bytes(b"q" * 3000)
    out = tmp_path / "b.swu"
    assert _create(pki, out, "--version", "1", "--compatible", "hw", "--rootfs",
                   str(tmp_path / "r.img")) == 0  # fmt: skip
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, out.read_bytes())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(fh))
        assert main(["bundle", "verify", "--keyring", str(pki / "ca.pem"), "-"]) == 0
    os.waitpid(pid, 0)
