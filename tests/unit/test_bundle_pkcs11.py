"""Keys in a PKCS#11 token: URIs, SoftHSM2 signing, one-line errors, key files still
working, and the gateway's AES decryption key in the token (installs through the
pipeline).

The token is Debian's SoftHSM2 in a temp dir (tests/pkcs11_token.py). The peers
(openssl cms -verify, SWUpdate) check the same bundles in
tests/peers/test_bundle_pkcs11_peers.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import sys
from pathlib import Path

import pytest
from asn1crypto import cms
from install_gateway import make_gateway, make_image
from pkcs11_token import AES_GW, MODULE, PIN, TOKEN, softhsm_token

from ferry.daemon.boot.slotrecord import get_record
from ferry.daemon.cli.main import main
from ferry.daemon.install.pipeline import install, make_context
from ferry.packaging import encryption, pkcs11
from ferry.packaging.encryption import AesKey, EncryptionKeyError, load_key
from ferry.packaging.errors import BundleCreateError
from ferry.packaging.keyring import load_keyring
from ferry.packaging.reader import BundleReader, read_unverified
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as tok:
        yield tok


def _rootfs(tmp: Path) -> Path:
    rootfs = tmp / "rootfs.img"
    rootfs.write_bytes(os.urandom(20_000) + b"\0" * 50_000)
    return rootfs


def _bundle(tmp: Path, key: str | Path, cert: Path | None, *, pss: bool = False) -> Path:
    out = tmp / "bundle.swu"
    signing = load_signing_key(key, cert, pss=pss)
    create_bundle(out, signing=signing, version="2.0", compatible=["gw"],
                  images=[ImageInput(path=_rootfs(tmp), compress="zstd")])  # fmt: skip
    return out


def _signer_info(bundle: Path) -> cms.SignerInfo:
    with bundle.open("rb") as fh:
        _desc, _raw, sig = read_unverified(fh)
    return cms.ContentInfo.load(sig)["content"]["signer_infos"][0]


# -- URIs ----------------------------------------------------------------------------------
def test_uri_parses_rfc7512_attributes_and_percent_encoding(tmp_path):
    uri = pkcs11.parse_uri(
        "pkcs11:token=My%20Token;object=signer;id=%01%a0;type=private"
        "?module-path=/x/y.so&pin-value=12%2634"
    )
    assert uri.path == {"token": "My Token", "object": "signer", "type": "private"}
    assert uri.key_id == b"\x01\xa0"
    assert uri.pin() == "12&34"
    assert "12" not in uri.redacted() and "pin-value=***" in uri.redacted()
    assert "id=%01%a0" in uri.redacted()
    pin = tmp_path / "pin"
    pin.write_text("s3cret\n")
    assert pkcs11.parse_uri(f"pkcs11:token=t?pin-source={pin}").pin() == "s3cret"
    assert pkcs11.parse_uri(f"pkcs11:token=t?pin-source=file:{pin}").pin() == "s3cret"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:tokn=x", "unknown path attribute 'tokn'"),
        ("pkcs11:token=x?pin=1", "unknown query attribute 'pin'"),
        ("pkcs11:token=x;token=y", "given twice"),
        ("pkcs11:token", "'token' is not name=value"),
        ("pkcs11:token=x?pin-value=12&34", "a query attribute is not name=value"),
        ("pkcs11:token=x?pin-value=1&pin-source=/p", "not both"),
        ("pkcs11:object=x;type=public", "names no key"),
        ("pkcs11:object=a b", "white space"),
        ("file:/key.pem", "starting with 'pkcs11:'"),
    ],
)
def test_bad_uri_is_one_line(uri, message):
    with pytest.raises(pkcs11.Pkcs11Error, match=message) as err:
        pkcs11.parse_uri(uri)
    assert "\n" not in str(err.value) and "34" not in str(err.value)


def test_missing_pin_source_and_module_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(pkcs11.Pkcs11Error, match="cannot read the PIN from pin-source"):
        pkcs11.parse_uri(f"pkcs11:token=t?pin-source={tmp_path}/nope").pin()
    monkeypatch.delenv(pkcs11.MODULE_ENV, raising=False)
    with pytest.raises(pkcs11.Pkcs11Error, match=f"module-path=.*or set {pkcs11.MODULE_ENV}"):
        pkcs11.module_path(pkcs11.parse_uri("pkcs11:token=t"))
    with pytest.raises(pkcs11.Pkcs11Error, match="does not exist"):
        pkcs11.module_path(pkcs11.parse_uri(f"pkcs11:token=t?module-path={tmp_path}/m.so"))
    monkeypatch.setenv(pkcs11.MODULE_ENV, MODULE)
    assert pkcs11.module_path(pkcs11.parse_uri("pkcs11:token=t")) == MODULE
    softhsm_dir = str(Path(MODULE).parent)
    uri = pkcs11.parse_uri(f"pkcs11:token=t?module-path={softhsm_dir}&module-name=softhsm2")
    assert pkcs11.module_path(uri) == MODULE


def test_missing_binding_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # import pkcs11 -> ImportError
    with pytest.raises(pkcs11.Pkcs11Error, match=r"pip install 'ferry-ota\[pkcs11\]'"):
        load_signing_key(f"pkcs11:token=t;object=k?module-path={MODULE}", None)


# -- signing through the token --------------------------------------------------------------
@pytest.mark.parametrize(
    ("obj", "pss", "algorithm"),
    [("rsa-signer", False, "rsassa_pkcs1v15"), ("rsa-signer", True, "rsassa_pss")],
)
def test_rsa_key_in_token_signs_a_bundle_ferry_verifies(token, tmp_path, obj, pss, algorithm):
    bundle = _bundle(tmp_path, token.uri(obj), token.rsa.signer_cert, pss=pss)
    with bundle.open("rb") as fh:
        reader = BundleReader(fh, load_keyring(token.rsa.ca_cert))
        reader.verify_all()
    assert reader.signer == "CN=ferry dev signer,O=ferry development"
    assert _signer_info(bundle)["signature_algorithm"]["algorithm"].native == algorithm


def test_ec_key_generated_in_token_signs_with_the_token_certificate(token, tmp_path):
    bundle = _bundle(tmp_path, token.uri("ec-signer", extra=";id=%02"), None)
    with bundle.open("rb") as fh:
        reader = BundleReader(fh, load_keyring(token.rsa.ca_cert))
        reader.verify_all()
    assert reader.signer == "CN=ferry token signer"
    assert _signer_info(bundle)["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"


def test_other_keyring_refuses_a_token_signed_bundle(token, tmp_path):
    from ferry.packaging.devpki import write_dev_pki
    from ferry.packaging.errors import UntrustedSigner

    other = write_dev_pki(tmp_path / "other", kind="ec")
    bundle = _bundle(tmp_path, token.uri("ec-signer"), None)
    with bundle.open("rb") as fh, pytest.raises(UntrustedSigner):
        BundleReader(fh, load_keyring(other.ca_cert))


def test_cli_creates_and_verifies_with_pin_source(token, tmp_path, capsys):
    out = tmp_path / "cli.swu"
    uri = f"pkcs11:token={TOKEN};object=rsa-signer?module-path={MODULE}&pin-source={token.pin_file}"
    rc = main(["bundle", "create", "--key", uri, "--cert", str(token.rsa.signer_cert),
               "--version", "3", "--compatible", "gw", "--rootfs", str(_rootfs(tmp_path)),
               "-o", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert main(["bundle", "verify", "--keyring", str(token.rsa.ca_cert), str(out)]) == 0
    assert "OK: version 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("key", "cert", "message"),
    [
        ("rsa-signer#pin", "rsa", f"token '{TOKEN}': PIN incorrect"),
        ("nope", "rsa", "no private key on the token matches"),
        ("rsa-signer#nopin", "rsa", "no private key on the token matches .no PIN given"),
        ("ec-signer", "rsa", "the token's key is EC, the certificate .* holds an RSA key"),
        ("rsa-signer", "none", "no certificate on the token matches"),
        ("rsa-signer#token", "rsa", "no such token"),
    ],
)
def test_cli_token_errors_are_one_line_and_write_nothing(token, tmp_path, capsys, key, cert,
                                                         message):  # fmt: skip
    obj, _, variant = key.partition("#")
    pin = "0000" if variant == "pin" else None if variant == "nopin" else PIN
    uri = token.uri(obj, pin=pin)
    if variant == "token":
        uri = uri.replace(f"token={TOKEN}", "token=absent")
    out = tmp_path / "bad.swu"
    args = ["bundle", "create", "--key", uri, "--version", "3", "--compatible", "gw",
            "--rootfs", str(_rootfs(tmp_path)), "-o", str(out)]  # fmt: skip
    if cert == "rsa":
        args += ["--cert", str(token.rsa.signer_cert)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert "0000" not in err and f"pin-value={PIN}" not in err  # the PIN is never shown
    assert not out.exists() and not list(tmp_path.glob(".ferry-*"))


def test_token_chosen_by_other_attributes_and_ambiguity_is_refused(token):
    with pkcs11.initialized_module(MODULE) as lib:
        ours = next(t for t in lib.get_tokens() if t.label == TOKEN)
        slot_id, serial = ours.slot.slot_id, ours.serial.decode().strip()
    base = f"object=rsa-signer?module-path={MODULE}&pin-value={PIN}"
    for sel in (f"slot-id={slot_id}", f"serial={serial};model=SoftHSM%20v2"):
        signing = load_signing_key(f"pkcs11:{sel};{base}", token.rsa.signer_cert)
        assert signing.cert.subject.rfc4514_string().startswith("CN=ferry dev signer")
    # SoftHSM2 always offers one more, uninitialized token: without token= two match
    with pytest.raises(pkcs11.Pkcs11Error, match=f"several tokens match .*'{TOKEN}'.*add token="):
        load_signing_key(f"pkcs11:{base}", token.rsa.signer_cert)


def test_wrong_pin_once_does_not_lock_the_token(token, tmp_path):
    with pytest.raises(pkcs11.Pkcs11Error, match="PIN incorrect"):
        load_signing_key(token.uri("rsa-signer", pin="9999"), token.rsa.signer_cert)
    assert load_signing_key(token.uri("rsa-signer"), token.rsa.signer_cert).cert is not None


def test_token_key_with_someone_elses_certificate_of_the_same_kind(token, tmp_path):
    from ferry.packaging.devpki import write_dev_pki

    stranger = write_dev_pki(tmp_path / "stranger", kind="rsa")
    with pytest.raises(BundleCreateError, match="does not belong to certificate"):
        load_signing_key(token.uri("rsa-signer"), stranger.signer_cert)


def test_external_cms_is_byte_identical_to_the_key_file_path(token):
    """cmsbuild writes what cryptography's PKCS#7 builder writes (RSA PKCS#1 v1.5 is
    deterministic), so verifiers see one shape whichever way a bundle was signed."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    from ferry.packaging import signature
    from ferry.packaging.cmsbuild import sign_external

    soft = load_signing_key(token.rsa.signer_key, token.rsa.signer_cert)

    class Soft:
        def sign_digest(self, digest: bytes, scheme: str) -> bytes:
            assert scheme == "pkcs1v15"
            return soft.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    reference = signature.sign(b"sw-description", soft.key, soft.cert)
    attrs = cms.ContentInfo.load(reference)["content"]["signer_infos"][0]["signed_attrs"]
    when = {a["type"].native: a["values"][0].native for a in attrs}["signing_time"]
    ours = sign_external(b"sw-description", Soft(), soft.cert, now=when)
    assert ours == reference
    via_token = sign_external(b"sw-description", pkcs11.TokenSigner(pkcs11.parse_uri(
        token.uri("rsa-signer"))), soft.cert, now=when)
    assert via_token == reference  # the token holds the same (imported) key


# -- key files keep working -----------------------------------------------------------------
def test_key_file_still_signs_and_needs_its_certificate(token, tmp_path):
    pki = token.rsa
    bundle = _bundle(tmp_path, pki.signer_key, pki.signer_cert)
    with bundle.open("rb") as fh:
        BundleReader(fh, load_keyring(pki.ca_cert)).verify_all()
    with pytest.raises(BundleCreateError, match="give the signer certificate"):
        load_signing_key(pki.signer_key, None)


# -- the gateway's decryption key in the token ----------------------------------------------
FILE_KEY = AesKey(key=AES_GW, ivt=bytes(range(100, 116)))  # the same key, as a file


def test_token_aes_key_loads_with_the_key_files_check_value(token):
    key = load_key(token.key_uri("aes-gw"))
    assert isinstance(key, pkcs11.TokenAesKey)
    # computed inside the token (C_DigestKey): the key itself is not extractable
    assert key.check is not None and encryption.key_check(key) == encryption.key_check(
        FILE_KEY)
    other = load_key(token.key_uri("aes-other"))
    assert encryption.key_check(other) != encryption.key_check(FILE_KEY)
    assert "1234" not in repr(key) and AES_GW.hex() not in repr(key)


@pytest.mark.parametrize("n", [0, 15, 16, 17, 4096, (1 << 20) + 5, (3 << 20) + 33])
def test_token_decrypts_exactly_what_the_key_file_decrypts(token, n):
    plain = os.urandom(n)
    iv = os.urandom(16)
    ct = io.BytesIO()
    encryption.encrypt_file(io.BytesIO(plain), ct, FILE_KEY, iv)
    key = load_key(token.key_uri("aes-gw"))
    got = encryption.decrypt_stream(io.BytesIO(ct.getvalue()), key, iv).read()
    assert got == plain
    with pytest.raises(encryption.DecryptError, match="cannot decrypt it"):
        other = load_key(token.key_uri("aes-other"))
        encryption.decrypt_stream(io.BytesIO(ct.getvalue()), other, iv).read()


def test_token_aes_key_errors_are_one_line(token, tmp_path):
    with pytest.raises(pkcs11.Pkcs11Error, match=r"pin-source=FILE .*not pin-value="):
        load_key(token.uri("aes-gw"))  # a PIN in ferry.toml would be readable by anyone
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("0000\n")
    with pytest.raises(pkcs11.Pkcs11Error, match="PIN incorrect"):
        load_key(token.key_uri("aes-gw").replace(str(token.pin_file), str(bad_pin)))
    with pytest.raises(pkcs11.Pkcs11Error, match="no secret key on the token matches"):
        load_key(token.key_uri("rsa-signer"))
    key = load_key(token.key_uri("aes-gw"))
    with pytest.raises(pkcs11.Pkcs11Error, match="no ivt of its own"):
        encryption.decrypt_stream(io.BytesIO(bytes(32)), key, None)


def test_build_host_refuses_a_token_key_for_encryption(token, tmp_path):
    with pytest.raises(BundleCreateError, match="a pkcs11: AES key decrypts on gateways only"):
        create_bundle(tmp_path / "x.swu", signing=load_signing_key(
            token.rsa.signer_key, token.rsa.signer_cert), version="1", compatible=["gw"],
            images=[ImageInput(path=_rootfs(tmp_path), compress=None)],
            encrypt_key=load_key(token.key_uri("aes-gw")))  # fmt: skip


@pytest.fixture
def gw(token, tmp_path, monkeypatch):
    g = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


def _token_key_in_config(gw, uri: str) -> None:
    text = gw.config_path.read_text()
    text = re.sub(r"(\[keyring\]\npath = .*\n)", rf'\1decryption_key = "{uri}"\n', text)
    gw.config_path.write_text(text)
    assert str(gw.config.keyring.decryption_key) == uri  # not taken as a relative path


def _encrypted(gw, tmp: Path, image: bytes, compress: str | None) -> Path:
    (tmp / "rootfs.img").write_bytes(image)
    out = tmp / "enc.swu"
    create_bundle(out, signing=load_signing_key(gw.pki_dir / "signer.key",
                                                gw.pki_dir / "signer.pem"),
                  version="1.1.0", compatible=["test-gw"],
                  images=[ImageInput(path=tmp / "rootfs.img", compress=compress)],
                  encrypt_key=FILE_KEY)  # fmt: skip
    return out


def _install(gw, bundle: Path) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(bundle), ctx=ctx)
    finally:
        ctx.journal.close()


@pytest.mark.parametrize("check", ["digested in the token", "token will not digest"])
@pytest.mark.parametrize("compress", [None, "zstd"])
def test_gateway_installs_an_encrypted_bundle_with_the_key_in_the_token(
        gw, token, tmp_path, monkeypatch, compress, check):  # fmt: skip
    if check == "token will not digest":  # then the plaintext is hashed, not trusted bound
        real = pkcs11.load_token_aes_key
        monkeypatch.setattr(pkcs11, "load_token_aes_key",
                            lambda *a: dataclasses.replace(real(*a), check=None))
    _token_key_in_config(gw, token.key_uri("aes-gw"))
    image = make_image("1.1.0", 300_001)
    _install(gw, _encrypted(gw, tmp_path, image, compress))
    assert gw.slot_path("B").read_bytes()[: len(image)] == image
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified
    assert rec.sha256 == hashlib.sha256(image).hexdigest()


def test_gateway_with_another_token_key_refuses_before_the_slot(gw, token, tmp_path):
    _token_key_in_config(gw, token.key_uri("aes-other"))
    before = hashlib.sha256(gw.slot_path("B").read_bytes()).hexdigest()
    with pytest.raises(EncryptionKeyError, match="another AES key") as err:
        _install(gw, _encrypted(gw, tmp_path, make_image("1.1.0", 100_000), None))
    assert "\n" not in str(err.value) and PIN not in str(err.value)
    assert hashlib.sha256(gw.slot_path("B").read_bytes()).hexdigest() == before
    assert gw.boot() == "A"
