"""Bundles signed through a PKCS#11 token (SoftHSM2) checked by independent verifiers.

ferry assembles the CMS around the token's raw signature itself (packaging/cmsbuild.py),
so ferry's own verify passing proves little: ``openssl cms -verify`` and SWUpdate
(``swupdate -c``, the helpers of test_bundle_peers.py) must accept the same bundles, for
every scheme a token key can sign with: RSA PKCS#1 v1.5 and PSS (key imported with
softhsm2-util) and ECDSA P-256 (key generated in the token, certificate read from it).
On the gateway side, the token's AES-CBC must undo ``openssl enc`` and swugenerator.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pkcs11_token import AES_GW, softhsm_token
from test_bundle_peers import extract, swupdate_accepted, swupdate_check, tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from install_gateway import make_gateway

from ferry.daemon.boot.slotrecord import get_record
from ferry.daemon.install.pipeline import install, make_context
from ferry.packaging.keyring import load_keyring
from ferry.packaging.reader import BundleReader
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as tok:
        yield tok


CASES = {
    "rsa-pkcs1v15": ("rsa-signer", True, False),
    "rsa-pss": ("rsa-signer", True, True),
    "ec-p256-cert-on-token": ("ec-signer", False, False),
}


def _make(token, tmp: Path, case: str) -> Path:
    obj, cert_file, pss = CASES[case]
    rootfs = tmp / "rootfs.img"
    rootfs.write_bytes(os.urandom(40_000) + b"\0" * 100_000)
    signing = load_signing_key(
        token.uri(obj), token.rsa.signer_cert if cert_file else None, pss=pss
    )
    out = tmp / "bundle.swu"
    create_bundle(out, signing=signing, version="1.2.3", compatible=["1.0"],
                  images=[ImageInput(path=rootfs, compress="zstd")])  # fmt: skip
    return out


def _openssl_verify(x: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("openssl"), "cms", "-verify", "-binary", "-inform", "DER",
         "-in", str(x / "sw-description.sig"), "-content", str(x / "sw-description"),
         "-CAfile", str(ca), "-out", os.devnull],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_openssl_cms_verifies_a_token_signed_bundle(token, tmp_path, case):
    bundle = _make(token, tmp_path, case)
    x = tmp_path / "x"
    extract(bundle, x)
    ok = _openssl_verify(x, token.rsa.ca_cert)
    assert ok.returncode == 0, ok.stderr
    assert "Verification successful" in ok.stderr
    printed = subprocess.run(
        [tool("openssl"), "cms", "-cmsout", "-print", "-inform", "DER",
         "-in", str(x / "sw-description.sig")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    want = {"rsa-pkcs1v15": "rsaEncryption", "rsa-pss": "rsassaPss",
            "ec-p256-cert-on-token": "ecdsa-with-SHA256"}[case]  # fmt: skip
    assert want in printed
    # the same command refuses an altered sw-description: the check above can fail
    desc = x / "sw-description"
    desc.write_bytes(desc.read_bytes().replace(b"1.2.3", b"9.9.9"))
    assert _openssl_verify(x, token.rsa.ca_cert).returncode != 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_swupdate_accepts_a_token_signed_bundle(token, tmp_path, case):
    bundle = _make(token, tmp_path, case)
    rc, out = swupdate_check(bundle, token.rsa, tmp_path)
    assert swupdate_accepted(rc, out), out[-3000:]
    with bundle.open("rb") as fh:
        BundleReader(fh, load_keyring(token.rsa.ca_cert)).verify_all()


def test_swupdate_refuses_a_token_signed_bundle_under_another_ca(token, tmp_path):
    from ferry.packaging.devpki import write_dev_pki

    other = write_dev_pki(tmp_path / "other", kind="ec")
    bundle = _make(token, tmp_path, "ec-p256-cert-on-token")
    rc, out = swupdate_check(bundle, other, tmp_path)
    assert not swupdate_accepted(rc, out)
    assert "Verified OK" not in out


# -- the gateway's AES key in the token, against independent encryptors ---------------------
def test_token_decrypts_what_openssl_enc_encrypts(token):
    """``openssl enc -aes-256-cbc`` (PKCS#7 padding) is the reference cipher; the token
    key is the same AES key, provisioned non-extractable."""
    from ferry.packaging import encryption

    plain = os.urandom((1 << 20) + 12345)
    iv = os.urandom(16)
    ct = subprocess.run(
        [tool("openssl"), "enc", "-aes-256-cbc", "-K", AES_GW.hex(), "-iv", iv.hex(),
         "-nosalt"],
        input=plain, capture_output=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    key = encryption.load_key(token.key_uri("aes-gw"))
    assert encryption.decrypt_stream(io.BytesIO(ct), key, iv).read() == plain


SWUGEN_TEMPLATE = """software = {
  version = "1.1.0";
  hardware-compatibility = ["test-gw"];
  images: (
    {
      filename = "rootfs.img";
      type = "raw";
      size = SIZE;
      encrypted = true;
    }
  );
};
"""


def test_gateway_with_the_key_in_a_token_installs_a_swugenerator_bundle(
        token, tmp_path, monkeypatch):  # fmt: skip
    """swugenerator (its own AES, a fresh ivt per image, no aes-key-check) makes the
    bundle; the gateway's key is only in SoftHSM2."""
    from ferry.packaging.encryption import encrypted_size

    gw = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    uri = token.key_uri("aes-gw")
    text = re.sub(r"(\[keyring\]\npath = .*\n)", rf'\1decryption_key = "{uri}"\n',
                  gw.config_path.read_text())  # fmt: skip
    gw.config_path.write_text(text)
    data = os.urandom(150_000) + bytes(50_003)
    art = tmp_path / "art"
    art.mkdir()
    (art / "rootfs.img").write_bytes(data)
    template = tmp_path / "sw-description.tmpl"
    template.write_text(SWUGEN_TEMPLATE.replace("SIZE", str(encrypted_size(len(data)))))
    keyfile = tmp_path / "swugen.key"  # swugenerator's key=/iv= format
    keyfile.write_text(f"key={AES_GW.hex()}\niv={bytes(16).hex()}\n")
    bundle = tmp_path / "gen.swu"
    res = subprocess.run(
        [tool("swugenerator"), "-s", str(template), "-a", str(art), "-K", str(keyfile),
         "-k", f"CMS,{gw.pki_dir / 'signer.key'},{gw.pki_dir / 'signer.pem'}",
         "-o", str(bundle), "create"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ctx = make_context(gw.config)
    try:
        install(gw.config, str(bundle), ctx=ctx)
    finally:
        ctx.journal.close()
    assert gw.slot_path("B").read_bytes()[: len(data)] == data
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert gw.env()["BOOT_ORDER"].split()[0] == "B"
