"""SWUpdate-compatible AES-CBC encryption of bundle images (packaging/encryption.py):
key files, the cipher against ``openssl enc``, what ``ferry bundle create --encrypt-key``
writes, and installs of encrypted bundles on a file-backed gateway, including every way
decryption can fail (the slot stays scratch, the error is one line)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from install_gateway import Gateway, make_gateway, make_image

from ferry.daemon.boot.slotrecord import get_record
from ferry.daemon.cli.main import main
from ferry.daemon.install.pipeline import install, make_context
from ferry.daemon.install.slotwriter import SlotHashMismatch, SlotWriteError
from ferry.daemon.journal import Journal
from ferry.packaging import encryption, writer
from ferry.packaging.compression import decompress_stream
from ferry.packaging.description import TargetSpec, parse_description
from ferry.packaging.encryption import (
    AesKey,
    DecryptError,
    EncryptionKeyError,
    decrypt_stream,
    encrypt_file,
    encrypted_size,
    load_key,
    parse_key,
)
from ferry.packaging.errors import BadDescription, BundleError, HashMismatch
from ferry.packaging.keyring import load_keyring
from ferry.packaging.reader import BundleReader
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

KEY = AesKey(key=bytes(range(32)), ivt=bytes(range(100, 116)))


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("openssl")
    assert exe, "openssl is not installed; run 'bash .ci/setup'"
    return subprocess.run([exe, *args], input=data, capture_output=True, timeout=60)


def key_file(path: Path, key: AesKey = KEY) -> Path:
    path.write_text(f"{key.key.hex()} {key.ivt.hex()}\n")
    return path


# -- key files --------------------------------------------------------------------------
def test_key_file_is_swupdates_two_hex_tokens(tmp_path: Path) -> None:
    assert load_key(key_file(tmp_path / "k")) == KEY
    # any whitespace between them, as fscanf("%ms %ms") reads it; upper case hex too
    assert parse_key(f"{KEY.key.hex().upper()}\n\t{KEY.ivt.hex()}") == KEY
    # AES-128 and -192 keys, as SWUpdate's set_aes_key accepts them
    assert len(parse_key("00" * 16 + " " + "11" * 16).key) == 16
    assert len(parse_key("00" * 24 + " " + "11" * 16).key) == 24
    assert "00010203" not in repr(KEY)  # no key material in logs


@pytest.mark.parametrize("text,match", [
    ("", "two hex tokens"),
    ("00" * 32, "two hex tokens"),
    ("00" * 32 + " " + "11" * 16 + " " + "22" * 8, "found 3"),
    ("00" * 31 + " " + "11" * 16, "key must be 32 or 48 or 64"),
    ("zz" * 32 + " " + "11" * 16, "key must be"),
    ("00" * 32 + " " + "11" * 15, "ivt must be 32"),
])
def test_bad_key_files_are_one_line_errors(text: str, match: str) -> None:
    with pytest.raises(EncryptionKeyError, match=match) as err:
        parse_key(text, "k.txt")
    assert "\n" not in str(err.value) and "k.txt" in str(err.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(EncryptionKeyError, match="cannot read AES key file"):
        load_key(tmp_path / "nope")


# -- the cipher -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 4096, (1 << 20) + 5])
def test_encrypt_matches_openssl_enc_and_decrypts_back(n: int) -> None:
    data = os.urandom(n)
    out = io.BytesIO()
    assert encrypt_file(io.BytesIO(data), out, KEY, KEY.ivt) == encrypted_size(n)
    ref = openssl("enc", "-aes-256-cbc", "-K", KEY.key.hex(), "-iv", KEY.ivt.hex(),
                  "-nosalt", data=data)
    assert ref.returncode == 0 and out.getvalue() == ref.stdout
    back = openssl("enc", "-d", "-aes-256-cbc", "-K", KEY.key.hex(), "-iv", KEY.ivt.hex(),
                   "-nosalt", data=ref.stdout)
    assert back.stdout == data
    for size in (1, 7, 100, 1 << 20):  # odd reads: the held block and the spill
        s = decrypt_stream(io.BytesIO(ref.stdout), KEY, None)
        parts = []
        while chunk := s.read(size):
            parts.append(chunk)
        assert b"".join(parts) == data
    s = decrypt_stream(io.BytesIO(ref.stdout), KEY, None)
    buf = bytearray(512 << 10)
    got = bytearray()
    while k := s.readinto(buf):
        got += buf[:k]
    assert bytes(got) == data


def test_an_images_own_ivt_overrides_the_key_files() -> None:
    data = os.urandom(1000)
    iv = os.urandom(16)
    ct = io.BytesIO()
    encrypt_file(io.BytesIO(data), ct, KEY, iv)
    assert decrypt_stream(io.BytesIO(ct.getvalue()), KEY, iv).read() == data
    # with the key file's ivt only the first block differs (CBC), so the whole image
    # is wrong: never silently the right one
    assert decrypt_stream(io.BytesIO(ct.getvalue()), KEY, None).read()[16:] == data[16:]
    assert decrypt_stream(io.BytesIO(ct.getvalue()), KEY, None).read()[:16] != data[:16]


@pytest.mark.parametrize("case", ["wrong key", "bad padding", "not whole blocks", "empty"])
def test_decrypt_failures_share_one_message(case: str) -> None:
    data = b"x" * 100
    ct = io.BytesIO()
    encrypt_file(io.BytesIO(data), ct, KEY, KEY.ivt)
    raw = ct.getvalue()
    key = KEY
    if case == "wrong key":
        key = AesKey(key=bytes(32), ivt=KEY.ivt)
    elif case == "bad padding":  # the plaintext ends in 0x00: no valid PKCS#7 pad
        bad = io.BytesIO()
        enc = encryption.Cipher(encryption.algorithms.AES(KEY.key),
                                encryption.modes.CBC(KEY.ivt)).encryptor()
        bad.write(enc.update(data + bytes(12)) + enc.finalize())
        raw = bad.getvalue()
    elif case == "not whole blocks":
        raw = raw[:-5]
    else:
        raw = b""
    with pytest.raises(DecryptError) as err:
        decrypt_stream(io.BytesIO(raw), key, None, what="image 'r'").read()
    assert str(err.value) == ("image 'r': cannot decrypt it: wrong AES key ([keyring] "
                              "decryption_key), or the image was encrypted wrongly")


# -- ferry bundle create --encrypt-key ----------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    assert main(["bundle", "dev-pki", str(d)]) == 0
    return d


def members(bundle: Path) -> dict[str, bytes]:
    """Member name -> bytes, by a small newc walk independent of ferry's reader."""
    data = bundle.read_bytes()
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        hdr = data[pos:pos + 110]
        size, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        start = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = data[start:start + size]
        pos = (start + size + 3) & ~3


@pytest.mark.parametrize("compress", ["zstd", "gzip", "none"])
def test_cli_create_encrypts_each_image_as_swupdate_expects(pki: Path, tmp_path: Path,
                                                              compress: str,
                                                              capsys: pytest.CaptureFixture[str],
                                                              ) -> None:
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(os.urandom(50_000) + bytes(70_000))
    fw = tmp_path / "fw.bin"
    fw.write_bytes(os.urandom(3000))
    out = tmp_path / "b.swu"
    rc = main(["bundle", "create", "--key", str(pki / "signer.key"), "--cert",
               str(pki / "signer.pem"), "--version", "1.0", "--compatible", "hw",
               "--rootfs", str(rootfs), "--target", f"smp-serial:mcu={fw}",
               "--compress", compress, "--encrypt-key", str(key_file(tmp_path / "aes")),
               "-o", str(out)])
    assert rc == 0 and "encrypted (AES-CBC)" in capsys.readouterr().out
    files = members(out)
    text = files["sw-description"].decode()
    assert text.count("encrypted = true;") == 2
    desc = parse_description(files["sw-description"])
    ivts = set()
    for entry, original in zip(desc.images, (rootfs, fw), strict=True):
        assert entry.encrypted and entry.ivt and entry.filename.endswith(".enc")
        ivts.add(entry.ivt)
        stored = files[entry.filename]
        # sha256 and size are of the ciphertext, as stored in the cpio (what SWUpdate
        # hashes); decompressed-* of the plaintext
        assert hashlib.sha256(stored).hexdigest() == entry.sha256 and len(stored) == entry.size
        plain = openssl("enc", "-d", "-aes-256-cbc", "-K", KEY.key.hex(), "-iv", entry.ivt,
                        "-nosalt", data=stored)
        assert plain.returncode == 0, plain.stderr
        kind = entry.compressed
        restored = decompress_stream(kind, io.BytesIO(plain.stdout)).read()  # compress first
        assert restored == original.read_bytes()
        assert entry.decompressed_sha256 == hashlib.sha256(restored).hexdigest()
        assert entry.decompressed_size == len(restored)
    assert len(ivts) == 2 and KEY.ivt.hex() not in ivts  # a fresh ivt per image
    # verify checks the ciphertext hashes without the key; inspect says encrypted
    assert main(["bundle", "verify", "--keyring", str(pki / "ca.pem"), str(out)]) == 0
    capsys.readouterr()
    assert main(["bundle", "inspect", "--json", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [i["encrypted"] for i in doc["images"]] == [True, True]


def test_recipe_encrypt_key_is_relative_to_the_recipe(pki: Path, tmp_path: Path) -> None:
    (tmp_path / "rootfs.img").write_bytes(os.urandom(1000))
    key_file(tmp_path / "aes.key")
    recipe = tmp_path / "r.toml"
    recipe.write_text('version = "2"\ncompatible = ["hw"]\nencrypt_key = "aes.key"\n'
                      '[rootfs]\nfile = "rootfs.img"\n')
    out = tmp_path / "b.swu"
    assert main(["bundle", "create", "--key", str(pki / "signer.key"), "--cert",
                 str(pki / "signer.pem"), "--recipe", str(recipe), "-o", str(out)]) == 0
    assert parse_description(members(out)["sw-description"]).images[0].encrypted


def test_bad_encrypt_key_fails_create_in_one_line(pki: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rootfs.img").write_bytes(b"x")
    (tmp_path / "aes").write_text("key=00\niv=11\n")  # swugenerator's format, not SWUpdate's
    rc = main(["bundle", "create", "--key", str(pki / "signer.key"), "--cert",
               str(pki / "signer.pem"), "--version", "1", "--compatible", "hw", "--rootfs",
               str(tmp_path / "rootfs.img"), "--encrypt-key", str(tmp_path / "aes"),
               "-o", str(tmp_path / "b.swu")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "'<key> <ivt>'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.swu").exists()


@pytest.mark.parametrize("entry,match", [
    ('encrypted = 1;', "encrypted must be true or false"),
    ('encrypted = true; ivt = "abc";', "ivt is not 32 hex"),
    ('encrypted = true; size = 17;', "not a whole number of 16-byte"),
    ('encrypted = true; size = 0;', "not a whole number of 16-byte"),
    ('encrypted = true; aes-key-check = "xyz";', "aes-key-check is not 32 hex"),
])
def test_description_refuses_bad_encryption_keys(entry: str, match: str) -> None:
    size = "" if "size" in entry else "size = 32;"
    text = (f'software = {{ version = "1"; images = ( {{ filename = "r"; sha256 = "{"a" * 64}";'
            f' {size} {entry} }} ); }};')
    with pytest.raises(BadDescription, match=match):
        parse_description(text.encode())


# -- installs ---------------------------------------------------------------------------
@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


def with_key(gw: Gateway, key: AesKey | None = KEY) -> None:
    """Give the gateway's config a [keyring] decryption_key (or leave it without)."""
    if key is None:
        return
    path = key_file(gw.root / "aes.key", key)
    text = gw.config_path.read_text()
    text = re.sub(r"(\[keyring\]\npath = .*\n)", rf'\1decryption_key = "{path}"\n', text)
    gw.config_path.write_text(text)
    assert gw.config.keyring.decryption_key == path


def encrypted_bundle(gw: Gateway, out: Path, image: bytes, *, compress: str | None,
                     target: bytes | None = None) -> Path:
    work = out.parent / (out.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    (work / "rootfs.img").write_bytes(image)
    inputs = [ImageInput(path=work / "rootfs.img", compress=compress)]
    if target is not None:
        (work / "mcu.bin").write_bytes(target)
        spec = TargetSpec(transport="smp-serial", name="mcu", format="bin", version="2")
        inputs.append(ImageInput(path=work / "mcu.bin", compress=compress, target=spec))
    signing = load_signing_key(gw.pki_dir / "signer.key", gw.pki_dir / "signer.pem")
    create_bundle(out, signing=signing, version="1.1.0", compatible=["test-gw"],
                  images=inputs, encrypt_key=KEY)
    return out


def run_install(gw: Gateway, bundle: Path) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(bundle), ctx=ctx)
    finally:
        ctx.journal.close()


def slot_digest(gw: Gateway, name: str) -> str:
    return hashlib.sha256(gw.slot_path(name).read_bytes()).hexdigest()


@pytest.mark.parametrize("compress", [None, "zstd", "zlib"])
def test_encrypted_bundle_installs_rootfs_and_target(gw: Gateway, tmp_path: Path,
                                                     compress: str | None) -> None:
    with_key(gw)
    image = make_image("1.1.0", 300_001)
    fw = os.urandom(5000)
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", image, compress=compress, target=fw)
    dep_id = run_install(gw, bundle)
    assert gw.slot_path("B").read_bytes()[: len(image)] == image
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified
    assert rec.sha256 == hashlib.sha256(image).hexdigest() and rec.size == len(image)
    dep = Journal.open(gw.data_dir).get(dep_id)
    assert dep.state == "rebooting" and dep.result is None
    staged = dep.info["staged"]
    assert Path(staged[0]["path"]).read_bytes() == fw
    assert "resume" not in dep.info or dep.info["resume"] is None


def refused(gw: Gateway, bundle: Path, error: type[BaseException] | tuple[type[BaseException], ...],
            match: str | None, *, slot_touched: bool = True) -> str:
    a, b = slot_digest(gw, "A"), slot_digest(gw, "B")
    with pytest.raises(error, match=match) as info:
        run_install(gw, bundle)
    message = str(info.value)
    assert "\n" not in message
    assert slot_digest(gw, "A") == a
    if not slot_touched:
        assert slot_digest(gw, "B") == b
    rec = get_record(gw.config, "rootfs.1")
    assert rec is None or not rec.verified  # scratch: nothing may activate it
    dep = Journal.open(gw.data_dir).latest()
    assert dep is not None and dep.result == "failure" and dep.error == message
    if slot_touched:  # invalidated before its first byte was written
        assert "B" not in gw.env()["BOOT_ORDER"].split()
    assert gw.boot() == "A"
    return message


def test_no_key_configured_is_refused_before_the_slot(gw: Gateway, tmp_path: Path) -> None:
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 10_000),
                              compress=None)
    refused(gw, bundle, EncryptionKeyError, "no AES key", slot_touched=False)


def test_wrong_key_is_refused_by_the_key_check_before_the_slot(gw: Gateway,
                                                               tmp_path: Path) -> None:
    with_key(gw, AesKey(key=bytes(32), ivt=KEY.ivt))
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 200_000),
                              compress=None)
    desc = parse_description(members(bundle)["sw-description"])
    assert desc.images[0].key_check == encryption.key_check(KEY)
    assert desc.images[0].key_check != encryption.key_check(AesKey(bytes(32), KEY.ivt))
    refused(gw, bundle, EncryptionKeyError, "another AES key", slot_touched=False)


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_wrong_key_without_a_key_check_leaves_the_slot_scratch(
        gw: Gateway, tmp_path: Path, compress: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As a bundle from another tool: no aes-key-check. Garbage plaintext: the padding,
    the zstd decoder or the signed plaintext hash catches it, whichever comes first;
    each is one line and names no plaintext."""
    monkeypatch.setattr(writer, "key_check", lambda key: None)
    with_key(gw, AesKey(key=bytes(32), ivt=KEY.ivt))
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 200_000),
                              compress=compress)
    assert b"aes-key-check" not in members(bundle)["sw-description"]
    msg = refused(gw, bundle, (DecryptError, SlotHashMismatch, BundleError), None)
    assert "another AES key" not in msg


def _rebuild(monkeypatch: pytest.MonkeyPatch, mangle: object) -> None:
    """Make the writer encrypt with a broken cipher (the signer's own mistake: the
    signed hash then matches the broken ciphertext)."""
    real = encryption.encrypt_file

    def broken(src: io.BufferedIOBase, dst: io.BufferedIOBase, key: AesKey,
               iv: bytes) -> int:
        tmp = io.BytesIO()
        real(src, tmp, key, iv)  # type: ignore[arg-type]
        data = mangle(tmp.getvalue(), key, iv)  # type: ignore[operator]
        dst.write(data)
        return len(data)

    monkeypatch.setattr(writer, "encrypt_file", broken)


def _bad_pad(ct: bytes, key: AesKey, iv: bytes) -> bytes:
    # re-encrypt the same plaintext with a last block ending in 0x00: invalid PKCS#7
    dec = encryption.Cipher(encryption.algorithms.AES(key.key), encryption.modes.CBC(iv))
    plain = dec.decryptor().update(ct)
    plain = plain[:-1] + b"\0"
    e = dec.encryptor()
    return e.update(plain) + e.finalize()


def test_bad_padding_leaves_the_slot_scratch(gw: Gateway, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with_key(gw)
    _rebuild(monkeypatch, _bad_pad)
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 100_000),
                              compress=None)
    msg = refused(gw, bundle, DecryptError, "cannot decrypt it")
    assert "padding" not in msg


def test_ciphertext_truncated_at_a_block_leaves_the_slot_scratch(
        gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_key(gw)
    monkeypatch.setattr(writer, "new_ivt", lambda: bytes(16))  # deterministic last block
    _rebuild(monkeypatch, lambda ct, key, iv: ct[:-32])
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", bytes(100_000), compress=None)
    refused(gw, bundle, (DecryptError, SlotWriteError), "cannot decrypt|produced")


def test_ciphertext_not_whole_blocks_is_refused_before_the_slot(
        gw: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_key(gw)
    _rebuild(monkeypatch, lambda ct, key, iv: ct[:-5])
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 50_000),
                              compress=None)
    refused(gw, bundle, BadDescription, "16-byte AES blocks", slot_touched=False)


@pytest.mark.parametrize("where", ["middle", "last block"])
@pytest.mark.parametrize("compress", [None, "zstd"])
def test_tampered_ciphertext_always_ends_in_the_hash_error(gw: Gateway, tmp_path: Path,
                                                          where: str,
                                                          compress: str | None) -> None:
    """No padding or decompression oracle: a flipped ciphertext bit garbles plaintext
    the decoder may choke on at once, or the padding; either way the caller sees only
    the HashMismatch of the stored bytes, the same as for an unencrypted image."""
    with_key(gw)
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 400_000),
                              compress=compress)
    reader = BundleReader(bundle.open("rb"), load_keyring(gw.pki_dir / "ca.pem"))
    entry = reader.description.images[0]
    data = bytearray(bundle.read_bytes())
    start = bytes(data).index(members(bundle)[entry.filename])
    pos = start + (entry.size // 3 if where == "middle" else entry.size - 20)
    data[pos] ^= 0x40
    bundle.write_bytes(bytes(data))
    msg = refused(gw, bundle, HashMismatch, "sha256")
    assert "decrypt" not in msg and "zstd" not in msg


def test_an_encrypted_image_is_never_resumed_mid_image(gw: Gateway, tmp_path: Path) -> None:
    bundle = encrypted_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 50_000),
                              compress="zstd")
    reader = BundleReader(bundle.open("rb"), load_keyring(gw.pki_dir / "ca.pem"))
    with pytest.raises(BundleError, match="cannot resume encrypted image"):
        next(reader.images(skip_first=4096))
