"""The image key wrapped for recipients (packaging/envelope.py, packaging/rewrap.py):
RSA-OAEP and ECDH recipients, two at once, the envelope's wire form, re-wrapping a
bundle for more recipients with its signature byte for byte unchanged, and installs on
a file-backed gateway that is, is not, or cannot tell whether it is a recipient (the
slot stays scratch and the error is one line naming who could open the bundle)."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from install_gateway import Gateway, make_gateway, make_image

from ferry.daemon.boot.slotrecord import get_record
from ferry.daemon.cli.main import main
from ferry.daemon.config import ConfigError, config_from_dict
from ferry.daemon.install.pipeline import install, make_context
from ferry.daemon.journal import Journal
from ferry.packaging import envelope
from ferry.packaging.description import parse_description
from ferry.packaging.encryption import AesKey, EncryptionKeyError
from ferry.packaging.envelope import (
    EnvelopeError,
    NoRecipient,
    Recipient,
    add_recipients,
    load_recipient,
    open_envelope,
    seal,
)
from ferry.packaging.errors import BadDescription, BundleError, UnlistedMember
from ferry.packaging.keyring import load_keyring
from ferry.packaging.reader import BundleReader
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

KEY = AesKey(key=bytes(range(32)), ivt=bytes(range(100, 116)))
OTHER_KEY = AesKey(key=bytes(range(1, 33)), ivt=KEY.ivt)


@dataclass(frozen=True)
class Who:
    key: Path
    cert: Path

    @property
    def recipient(self) -> Recipient:
        return load_recipient(self.key, self.cert)

    @property
    def x509(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())


def make_who(d: Path, name: str, kind: str, *, ski: bool = True) -> Who:
    priv: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        priv = ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet device CA")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(priv.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30)))
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(priv.public_key()), critical=False)
    cert = builder.sign(priv, hashes.SHA256())
    key_path, cert_path = d / f"{name}.key", d / f"{name}.pem"
    key_path.write_bytes(priv.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Who(key=key_path, cert=cert_path)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Who]:
    d = tmp_path_factory.mktemp("recipients")
    return {"rsa": make_who(d, "gw-rsa", "rsa"), "ec": make_who(d, "gw-ec", "ec"),
            "p384": make_who(d, "gw-p384", "p384"), "stranger": make_who(d, "stranger", "ec"),
            "rsa2": make_who(d, "gw-rsa2", "rsa")}


def parsed(der: bytes) -> cms.EnvelopedData:
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "enveloped_data"
    return info["content"]


# -- the envelope -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rsa", "ec", "p384"])
def test_each_recipient_kind_opens_its_envelope(people: dict[str, Who], kind: str) -> None:
    der = seal(KEY, [people[kind].x509])
    assert open_envelope(der, people[kind].recipient) == KEY
    with pytest.raises(NoRecipient):
        open_envelope(der, people["stranger"].recipient)


def test_wire_form_is_rsa_oaep_sha256_and_ecdh_sha256kdf_aes256_wrap(
        people: dict[str, Who]) -> None:
    der = seal(KEY, [people["rsa"].x509, people["ec"].x509])
    env = parsed(der)
    assert env["version"].native == "v2"  # a kari (v3) is present: RFC 5652 6.1
    ktri, kari = (i.chosen for i in env["recipient_infos"])
    alg = ktri["key_encryption_algorithm"]
    assert alg["algorithm"].native == "rsaes_oaep"
    assert alg["parameters"]["hash_algorithm"]["algorithm"].native == "sha256"
    assert alg["parameters"]["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"
    assert ktri["rid"].name == "issuer_and_serial_number"
    assert ktri["rid"].chosen["serial_number"].native == people["rsa"].x509.serial_number
    kalg = kari["key_encryption_algorithm"]
    assert kalg["algorithm"].dotted == "1.3.132.1.11.1"  # dhSinglePass-stdDH-sha256kdf
    assert cms.KeyEncryptionAlgorithm.load(kalg["parameters"].dump())["algorithm"].native == (
        "aes256_wrap")
    assert kari["originator"].name == "originator_key"  # ephemeral-static ECDH
    assert len(kari["recipient_encrypted_keys"][0]["encrypted_key"].native) == 40  # 32 + 8
    eci = env["encrypted_content_info"]
    assert eci["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    assert parsed(seal(KEY, [people["rsa"].x509]))["version"].native == "v0"
    # the content is SWUpdate's key file; two seals never share ciphertext or wrapping
    assert envelope.key_text(KEY) == f"{KEY.key.hex()} {KEY.ivt.hex()}\n".encode()
    assert seal(KEY, [people["ec"].x509]) != seal(KEY, [people["ec"].x509])


def test_two_recipients_each_open_it(people: dict[str, Who]) -> None:
    der = seal(KEY, [people["rsa"].x509, people["ec"].x509])
    assert open_envelope(der, people["rsa"].recipient) == KEY
    assert open_envelope(der, people["ec"].recipient) == KEY


def test_wrong_recipient_is_told_every_recipient_in_one_line(people: dict[str, Who]) -> None:
    der = seal(KEY, [people["rsa"].x509, people["ec"].x509])
    with pytest.raises(NoRecipient) as err:
        open_envelope(der, people["stranger"].recipient)
    msg = str(err.value)
    assert "\n" not in msg and "CN=stranger" in msg and "2 recipient(s)" in msg
    for who in ("rsa", "ec"):
        assert f"serial {people[who].x509.serial_number:#x}" in msg
    assert "RSA issuer 'Common Name: fleet device CA'" in msg and "EC issuer" in msg
    # a same-kind key whose certificate is not named does not open it either
    with pytest.raises(NoRecipient):
        open_envelope(der, people["rsa2"].recipient)


def _flip(der: bytes, at: int) -> bytes:
    b = bytearray(der)
    b[at] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("where", ["content", "wrapped", "truncated", "garbage"])
def test_tampered_envelope_is_one_line(people: dict[str, Who], where: str) -> None:
    der = seal(KEY, [people["ec"].x509])
    env = parsed(der)
    if where == "content":
        ct = env["encrypted_content_info"]["encrypted_content"].native
        bad = _flip(der, der.index(ct) + len(ct) - 1)  # the padding block
    elif where == "wrapped":
        wrapped = env["recipient_infos"][0].chosen["recipient_encrypted_keys"][0][
            "encrypted_key"].native
        bad = _flip(der, der.index(wrapped) + 3)
    elif where == "truncated":
        bad = der[:-20]
    else:
        bad = b"\x30\x03\x02\x01\x00" + der
    with pytest.raises(EnvelopeError) as err:
        open_envelope(bad, people["ec"].recipient)
    assert "\n" not in str(err.value) and "sw-description.key" in str(err.value)


def test_add_recipients_keeps_the_old_entries_byte_for_byte(people: dict[str, Who]) -> None:
    der = seal(KEY, [people["rsa"].x509])
    more = add_recipients(der, people["rsa"].recipient, [people["ec"].x509, people["rsa"].x509])
    old, new = parsed(der), parsed(more)
    assert len(new["recipient_infos"]) == 2  # the existing recipient is not added twice
    assert new["recipient_infos"][0].dump() == old["recipient_infos"][0].dump()
    assert new["encrypted_content_info"].dump() == old["encrypted_content_info"].dump()
    assert open_envelope(more, people["ec"].recipient) == KEY
    with pytest.raises(NoRecipient):  # only a current recipient can add others
        add_recipients(der, people["ec"].recipient, [people["p384"].x509])


def test_recipient_key_and_cert_must_match(people: dict[str, Who]) -> None:
    with pytest.raises(EnvelopeError, match="does not belong"):
        load_recipient(people["rsa"].key, people["ec"].cert)
    with pytest.raises(BundleError, match="which PKCS#11 module"):  # a token key: below
        load_recipient("pkcs11:token=gw;object=k", people["ec"].cert)


# -- bundles --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    assert main(["bundle", "dev-pki", str(d)]) == 0
    return d


def members(bundle: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) in archive order, by a small newc walk independent of ferry's."""
    data = bundle.read_bytes()
    out: list[tuple[str, bytes]] = []
    pos = 0
    while True:
        hdr = data[pos:pos + 110]
        size, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        start = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append((name, data[start:start + size]))
        pos = (start + size + 3) & ~3


def create(pki: Path, tmp: Path, *to: Who, extra: tuple[str, ...] = ()) -> Path:
    img = tmp / "rootfs.img"
    if not img.exists():
        img.write_bytes(make_image("1.1.0", 100_001))
    out = tmp / "a.swu"
    args = ["bundle", "create", "--key", str(pki / "signer.key"), "--cert",
            str(pki / "signer.pem"), "--version", "1.1.0", "--compatible", "test-gw",
            "--rootfs", str(img), "-o", str(out), *extra]
    for who in to:
        args += ["--to", str(who.cert)]
    assert main(args) == 0
    return out


def fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A CLI run that must fail with exit 1 and one line on stderr; returns that line."""
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("ferry: ") and err.count("\n") == 1, err
    return err


def test_create_to_puts_the_envelope_right_after_the_signature(
        pki: Path, tmp_path: Path, people: dict[str, Who]) -> None:
    bundle = create(pki, tmp_path, people["rsa"], people["ec"])
    names = [n for n, _ in members(bundle)]
    assert names == ["sw-description", "sw-description.sig", "sw-description.key",
                     "rootfs.img.zst.enc"]
    env = dict(members(bundle))["sw-description.key"]
    key = open_envelope(env, people["ec"].recipient)
    desc = parse_description(dict(members(bundle))["sw-description"])
    assert desc.images[0].encrypted and desc.images[0].key_check
    from ferry.packaging.encryption import check_key
    assert check_key(desc.images[0], key)
    reader = BundleReader(bundle.open("rb"), load_keyring(pki / "ca.pem"))
    assert reader.read_envelope() == env
    reader.verify_all()


def test_rewrap_keeps_signature_and_images_byte_identical(
        pki: Path, tmp_path: Path, people: dict[str, Who],
        capsys: pytest.CaptureFixture[str]) -> None:
    a = create(pki, tmp_path, people["rsa"])
    b = tmp_path / "b.swu"
    assert main(["bundle", "encrypt", "--to", str(people["ec"].cert), "--to",
                 str(people["p384"].cert), "--key", str(people["rsa"].key), "--cert",
                 str(people["rsa"].cert), str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "3 recipient(s)" in out and "signature unchanged" in out
    ma, mb = dict(members(a)), dict(members(b))
    assert set(ma) == set(mb)
    for name in ma:
        if name != "sw-description.key":
            assert ma[name] == mb[name], name
    for who in ("rsa", "ec", "p384"):
        assert open_envelope(mb["sw-description.key"], people[who].recipient) == (
            open_envelope(ma["sw-description.key"], people["rsa"].recipient))
    assert main(["bundle", "verify", "--keyring", str(pki / "ca.pem"), str(b)]) == 0
    assert len(b.read_bytes()) % 512 == 0
    capsys.readouterr()
    assert main(["bundle", "inspect", "--json", str(b)]) == 0
    shown = json.loads(capsys.readouterr().out)["recipients"]
    assert len(shown) == 3 and shown[0].startswith("RSA issuer 'Common Name: fleet device CA'")
    assert f"serial {people['p384'].x509.serial_number:#x}" in shown[2]


def test_rewrap_by_a_non_recipient_is_refused(pki: Path, tmp_path: Path,
                                              people: dict[str, Who],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    a = create(pki, tmp_path, people["rsa"])
    err = fails(["bundle", "encrypt", "--to", str(people["ec"].cert), "--key",
                 str(people["stranger"].key), "--cert", str(people["stranger"].cert), str(a),
                 str(tmp_path / "b.swu")], capsys)
    assert "CN=stranger" in err and f"{people['rsa'].x509.serial_number:#x}" in err
    assert not (tmp_path / "b.swu").exists()


def test_rewrap_with_the_key_file(pki: Path, tmp_path: Path, people: dict[str, Who],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "aes.key"
    keyfile.write_text(f"{KEY.key.hex()} {KEY.ivt.hex()}\n")
    a = create(pki, tmp_path, extra=("--encrypt-key", str(keyfile)))
    assert "sw-description.key" not in dict(members(a))
    b = tmp_path / "b.swu"
    assert main(["bundle", "encrypt", "--to", str(people["ec"].cert), "--encrypt-key",
                 str(keyfile), str(a), str(b)]) == 0
    assert open_envelope(dict(members(b))["sw-description.key"], people["ec"].recipient) == KEY
    # the wrong key file is refused before OUT is written
    wrong = tmp_path / "wrong.key"
    wrong.write_text(f"{OTHER_KEY.key.hex()} {OTHER_KEY.ivt.hex()}\n")
    assert "aes-key-check" in fails(["bundle", "encrypt", "--to", str(people["ec"].cert),
                                     "--encrypt-key", str(wrong), str(a),
                                     str(tmp_path / "c.swu")], capsys)
    assert not (tmp_path / "c.swu").exists()
    # an existing envelope's recipients cannot be kept with a key file: say so ...
    assert "--replace" in fails(["bundle", "encrypt", "--to", str(people["rsa"].cert),
                                 "--encrypt-key", str(keyfile), str(b),
                                 str(tmp_path / "c.swu")], capsys)
    assert not (tmp_path / "c.swu").exists()
    # ... or replace them
    c = tmp_path / "c.swu"
    assert main(["bundle", "encrypt", "--replace", "--to", str(people["rsa"].cert),
                 "--encrypt-key", str(keyfile), str(b), str(c)]) == 0
    assert open_envelope(dict(members(c))["sw-description.key"], people["rsa"].recipient) == KEY
    with pytest.raises(NoRecipient):
        open_envelope(dict(members(c))["sw-description.key"], people["ec"].recipient)


def test_rewrap_refuses_an_unencrypted_bundle(pki: Path, tmp_path: Path,
                                              people: dict[str, Who],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "aes.key"
    keyfile.write_text(f"{KEY.key.hex()} {KEY.ivt.hex()}\n")
    a = create(pki, tmp_path)
    assert "no encrypted images" in fails(
        ["bundle", "encrypt", "--to", str(people["ec"].cert), "--encrypt-key", str(keyfile),
         str(a), str(tmp_path / "b.swu")], capsys)


def test_envelope_elsewhere_or_as_an_image_name_is_refused(
        pki: Path, tmp_path: Path, people: dict[str, Who]) -> None:
    # after the images it is an unlisted member
    img = tmp_path / "r.img"
    img.write_bytes(b"x" * 1000)
    signing = load_signing_key(pki / "signer.key", pki / "signer.pem")
    a = tmp_path / "a.swu"
    create_bundle(a, signing=signing, version="1", compatible=["test-gw"],
                  images=[ImageInput(path=img, compress=None)], encrypt_key=KEY)
    data = bytearray(a.read_bytes())
    from ferry.packaging.cpio import bytesum, data_padding, encode_header
    env = seal(KEY, [people["ec"].x509])
    trailer = data.rindex(b"070702")  # the trailer's header
    member = encode_header("sw-description.key", len(env), bytesum(env), ino=9) + env + (
        data_padding(len(env)))
    bad = tmp_path / "bad.swu"
    bad.write_bytes(bytes(data[:trailer]) + member + bytes(data[trailer:]))
    reader = BundleReader(bad.open("rb"), load_keyring(pki / "ca.pem"))
    assert reader.read_envelope() is None
    with pytest.raises(UnlistedMember, match=r"sw-description\.key"):
        reader.verify_all()
    # an image may not take the name
    text = dict(members(a))["sw-description"].replace(b"r.img.enc", b"sw-description.key")
    with pytest.raises(BadDescription, match="reserved name"):
        parse_description(text)


def test_config_wants_recipient_key_and_cert_together() -> None:
    with pytest.raises(ConfigError, match="recipient_cert go together"):
        config_from_dict({"gateway": {"compatible": "x"},
                          "keyring": {"recipient_key": "/k.pem"}})


# -- installs ---------------------------------------------------------------------------
@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


def as_recipient(gw: Gateway, who: Who | None, *, key_file: AesKey | None = None) -> None:
    lines = ""
    if who is not None:
        lines += f'recipient_key = "{who.key}"\nrecipient_cert = "{who.cert}"\n'
    if key_file is not None:
        path = gw.root / "aes.key"
        path.write_text(f"{key_file.key.hex()} {key_file.ivt.hex()}\n")
        lines += f'decryption_key = "{path}"\n'
    text = gw.config_path.read_text()
    gw.config_path.write_text(re.sub(r"(\[keyring\]\npath = .*\n)", lambda m: m[1] + lines,
                                     text))
    assert gw.config.keyring.recipient_key == (who.key if who else None)


def gw_bundle(gw: Gateway, out: Path, image: bytes, *to: Who,
              key: AesKey | None = None) -> Path:
    src = out.parent / (out.name + ".img")
    src.write_bytes(image)
    signing = load_signing_key(gw.pki_dir / "signer.key", gw.pki_dir / "signer.pem")
    k = key or AesKey(key=bytes(range(40, 72)), ivt=bytes(16))
    create_bundle(out, signing=signing, version="1.1.0", compatible=["test-gw"],
                  images=[ImageInput(path=src, compress="zstd")], encrypt_key=k,
                  envelope=seal(k, [w.x509 for w in to]) if to else None)
    return out


def run_install(gw: Gateway, bundle: Path) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(bundle), ctx=ctx)
    finally:
        ctx.journal.close()


def slot_digest(gw: Gateway, name: str) -> str:
    return hashlib.sha256(gw.slot_path(name).read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_a_recipient_gateway_installs_end_to_end(gw: Gateway, tmp_path: Path,
                                                 people: dict[str, Who], kind: str) -> None:
    as_recipient(gw, people[kind])
    image = make_image("1.1.0", 300_001)
    bundle = gw_bundle(gw, tmp_path / "b.swu", image, people["stranger"], people[kind])
    dep_id = run_install(gw, bundle)
    assert gw.slot_path("B").read_bytes()[: len(image)] == image
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified and rec.sha256 == hashlib.sha256(image).hexdigest()
    assert Journal.open(gw.data_dir).get(dep_id).state == "rebooting"


def refused(gw: Gateway, bundle: Path, error: type[BaseException], match: str) -> str:
    a, b = slot_digest(gw, "A"), slot_digest(gw, "B")
    with pytest.raises(error, match=match) as info:
        run_install(gw, bundle)
    message = str(info.value)
    assert "\n" not in message
    assert (slot_digest(gw, "A"), slot_digest(gw, "B")) == (a, b)  # refused while verifying
    rec = get_record(gw.config, "rootfs.1")
    assert rec is None or not rec.verified
    dep = Journal.open(gw.data_dir).latest()
    assert dep is not None and dep.result == "failure" and dep.error == message
    assert gw.boot() == "A"
    return message


def test_a_gateway_that_is_no_recipient_names_the_recipients(
        gw: Gateway, tmp_path: Path, people: dict[str, Who]) -> None:
    as_recipient(gw, people["stranger"])
    bundle = gw_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 10_000),
                       people["rsa"], people["ec"])
    msg = refused(gw, bundle, NoRecipient, "not wrapped for this key's certificate")
    for who in ("rsa", "ec"):
        assert f"serial {people[who].x509.serial_number:#x}" in msg


def test_a_gateway_without_recipient_key_names_the_recipients(
        gw: Gateway, tmp_path: Path, people: dict[str, Who]) -> None:
    bundle = gw_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 10_000), people["ec"])
    msg = refused(gw, bundle, EncryptionKeyError, r"no recipient key \(\[keyring\]")
    assert f"serial {people['ec'].x509.serial_number:#x}" in msg


def test_key_file_still_works_beside_an_envelope(gw: Gateway, tmp_path: Path,
                                                 people: dict[str, Who]) -> None:
    # not a recipient, but the AES key file opens it: the fleet-wide key as a fallback
    as_recipient(gw, people["stranger"], key_file=KEY)
    image = make_image("1.1.0", 50_000)
    bundle = gw_bundle(gw, tmp_path / "b.swu", image, people["ec"], key=KEY)
    run_install(gw, bundle)
    assert gw.slot_path("B").read_bytes()[: len(image)] == image


def test_swapped_envelope_is_refused_by_the_signed_key_check(
        gw: Gateway, tmp_path: Path, people: dict[str, Who]) -> None:
    """An attacker who replaces the unsigned envelope with one for a key of their own
    gets the gateway to open it, and is stopped by the signed aes-key-check."""
    as_recipient(gw, people["ec"])
    bundle = gw_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 10_000), people["ec"])
    data = bundle.read_bytes()
    env = dict(members(bundle))["sw-description.key"]
    evil = seal(OTHER_KEY, [people["ec"].x509])
    assert len(evil) == len(env)  # same layout: a swap in place keeps the cpio sizes
    swapped = tmp_path / "swapped.swu"
    swapped.write_bytes(data.replace(env, evil))
    refused(gw, swapped, EncryptionKeyError, "does not match the signed aes-key-check")


def test_tampered_envelope_bytes_are_refused_in_one_line(
        gw: Gateway, tmp_path: Path, people: dict[str, Who]) -> None:
    as_recipient(gw, people["rsa"])
    bundle = gw_bundle(gw, tmp_path / "b.swu", make_image("1.1.0", 10_000), people["rsa"])
    data = bundle.read_bytes()
    env = dict(members(bundle))["sw-description.key"]
    bad = bytearray(env)
    bad[-5] ^= 0xFF  # inside the encrypted content's last block
    tampered = tmp_path / "t.swu"
    tampered.write_bytes(data.replace(env, bytes(bad)))
    refused(gw, tampered, EnvelopeError, "sw-description.key")


# -- the recipient key in a PKCS#11 token (SoftHSM2) ---------------------------------------
@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pkcs11_token import softhsm_token

    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as tok:
        yield tok


def token_certs(token: Any) -> dict[str, Path]:
    """rsa-signer: imported RSA-2048, cert a file; ec-signer: P-256 generated in the token."""
    return {"rsa-signer": token.rsa.signer_cert, "ec-signer": token.ec_cert}


@pytest.mark.parametrize("obj", ["rsa-signer", "ec-signer"])
def test_token_recipient_opens_the_envelope(token: Any, obj: str) -> None:
    cert = token_certs(token)[obj]
    me = load_recipient(token.key_uri(obj), cert)
    assert "1234" not in repr(me.key)
    der = seal(KEY, [x509.load_pem_x509_certificate(cert.read_bytes())])
    assert open_envelope(der, me) == KEY  # RSA: SHA-256 OAEP, decoded by ferry (below)


def test_token_recipient_errors_are_one_line(token: Any, people: dict[str, Who]) -> None:
    from ferry.packaging.pkcs11 import Pkcs11Error

    with pytest.raises(Pkcs11Error, match="does not belong to the recipient") as err:
        load_recipient(token.key_uri("ec-signer"), people["ec"].cert)
    assert "\n" not in str(err.value)
    with pytest.raises(Pkcs11Error, match="pin-source"):
        load_recipient(token.uri("ec-signer"), token.ec_cert)  # pin-value= in the URI
    # a tampered RSA wrap through the token's raw-RSA path is the envelope's one line
    me = load_recipient(token.key_uri("rsa-signer"), token.rsa.signer_cert)
    der = seal(KEY, [me.cert])
    wrapped = parsed(der)["recipient_infos"][0].chosen["encrypted_key"].native
    with pytest.raises(EnvelopeError, match="corrupt or tampered"):
        open_envelope(_flip(der, der.index(wrapped) + 10), me)


def test_oaep_decode_matches_cryptography_and_refuses_garbage() -> None:
    from ferry.packaging.envelope_token import oaep_decode

    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n, d = priv.public_key().public_numbers().n, priv.private_numbers().d
    from cryptography.hazmat.primitives.asymmetric import padding as ap
    for h, mgf, label in [("sha256", "sha256", None), ("sha1", "sha1", None),
                          ("sha384", "sha256", b"lbl")]:
        algo = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
        ct = priv.public_key().encrypt(b"secret" * 5, ap.OAEP(
            mgf=ap.MGF1(algo[mgf]), algorithm=algo[h], label=label))
        raw = pow(int.from_bytes(ct), d, n).to_bytes(256)
        assert oaep_decode(raw, 256, h, mgf, label) == b"secret" * 5
        with pytest.raises(ValueError, match="OAEP decoding failed"):
            oaep_decode(raw, 256, h, mgf, b"other label")
        with pytest.raises(ValueError, match="OAEP decoding failed"):
            oaep_decode(_flip(raw, 100), 256, h, mgf, label)


def test_gateway_with_its_recipient_key_in_a_token_installs(
        token: Any, gw: Gateway, tmp_path: Path) -> None:
    uri = token.key_uri("ec-signer")
    text = gw.config_path.read_text()
    gw.config_path.write_text(re.sub(
        r"(\[keyring\]\npath = .*\n)",
        lambda m: m[1] + f'recipient_key = "{uri}"\nrecipient_cert = "{token.ec_cert}"\n',
        text))
    assert str(gw.config.keyring.recipient_key) == uri
    who = Who(key=Path("/nonexistent"), cert=token.ec_cert)
    image = make_image("1.1.0", 120_001)
    bundle = gw_bundle(gw, tmp_path / "b.swu", image, who)
    run_install(gw, bundle)
    assert gw.slot_path("B").read_bytes()[: len(image)] == image
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified
