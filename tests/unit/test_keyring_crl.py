"""Revocation: CRLs in the keyring (PEM blocks, *.crl files beside it) refuse a revoked
signer or intermediate by subject and serial; a CRL's signature is checked against its
issuer; an expired CRL still revokes (with a warning). ferry's decision is checked
against ``openssl verify -crl_check`` on the same certificates and CRLs."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ferry.packaging import devpki, signature
from ferry.packaging.errors import KeyringError
from ferry.packaging.keyring import Keyring, load_keyring
from ferry.packaging.keyringupdate import check_keyring_bytes
from ferry.packaging.revocation import BadCrl, RevokedSigner

DATA = b'software = { version = "1"; };\n'
NOW = dt.datetime.now(dt.UTC)


def make_crl(issuer: x509.Certificate, key: devpki.PrivateKey, serials: list[int], *,
             next_update: dt.datetime | None = None,
             name: x509.Name | None = None) -> x509.CertificateRevocationList:
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(name or issuer.subject)
         .last_update(NOW - dt.timedelta(days=2))
         .next_update(next_update or NOW + dt.timedelta(days=30)))
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s)
            .revocation_date(NOW - dt.timedelta(days=1)).build())
    return b.sign(key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki():
    ca_key = devpki.new_key("ec")
    ca = devpki.make_cert("Fleet CA", ca_key, ca=True)
    keys = [devpki.new_key("ec") for _ in range(2)]
    signers = [devpki.make_cert(f"signer {i}", k, issuer=(ca, ca_key))
               for i, k in enumerate(keys)]
    return ca, ca_key, signers, keys


def sig_by(pki, i: int) -> bytes:
    _ca, _k, signers, keys = pki
    return signature.sign(DATA, keys[i], signers[i])


def test_revoked_signer_is_refused_by_subject_and_serial(pki):
    ca, ca_key, signers, _ = pki
    crl = make_crl(ca, ca_key, [signers[0].serial_number])
    ring = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(crl))
    assert len(ring.crls) == 1
    with pytest.raises(RevokedSigner) as err:
        signature.verify(DATA, sig_by(pki, 0), ring)
    msg = str(err.value)
    assert "CN=signer 0" in msg and f"serial {signers[0].serial_number:X}" in msg
    assert "\n" not in msg
    # the other signer under the same CA is not on the list
    assert signature.verify(DATA, sig_by(pki, 1), ring).subject.startswith("CN=signer 1")


def test_revoked_intermediate_and_intermediate_crl(pki):
    ca, ca_key, _s, _k = pki
    ikey = devpki.new_key("ec")
    inter = devpki.make_cert("Build CA", ikey, issuer=(ca, ca_key), ca=True, path_length=0)
    lkey = devpki.new_key("ec")
    leaf = devpki.make_cert("leaf", lkey, issuer=(inter, ikey))
    sig = signature.sign(DATA, lkey, leaf, extra_certs=[inter])
    plain = Keyring.from_pem(devpki.cert_pem(ca))
    signature.verify(DATA, sig, plain)
    by_root = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(
        make_crl(ca, ca_key, [inter.serial_number])))
    with pytest.raises(RevokedSigner, match="intermediate CA certificate 'CN=Build CA"):
        signature.verify(DATA, sig, by_root)
    by_inter = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(
        make_crl(inter, ikey, [leaf.serial_number])))
    with pytest.raises(RevokedSigner, match=f"signer certificate 'CN=leaf.*{leaf.serial_number:X}"):
        signature.verify(DATA, sig, by_inter)


def test_crl_signature_is_checked_against_its_issuer(pki):
    ca, _ca_key, signers, _ = pki
    forged = make_crl(ca, devpki.new_key("ec"), [signers[1].serial_number])
    ring = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(forged))
    with pytest.raises(BadCrl, match="signature does not verify"):
        signature.verify(DATA, sig_by(pki, 1), ring)
    # and a keyring offered for rotation with such a CRL is refused before it ships
    with pytest.raises(KeyringError, match="signature does not verify"):
        check_keyring_bytes(devpki.cert_pem(ca) + crl_pem(forged), 2, "new.pem")


def test_crl_of_another_issuer_is_ignored(pki):
    ca, _ca_key, signers, _ = pki
    other_key = devpki.new_key("ec")
    other = devpki.make_cert("Other CA", other_key, ca=True)
    crl = make_crl(other, other_key, [signers[0].serial_number])  # same serial, other CA
    ring = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(crl))
    signature.verify(DATA, sig_by(pki, 0), ring)


def test_expired_crl_still_revokes_and_warns(pki, caplog):
    ca, ca_key, signers, _ = pki
    stale = make_crl(ca, ca_key, [signers[0].serial_number],
                     next_update=NOW - dt.timedelta(hours=1))
    ring = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(stale))
    caplog.set_level(logging.WARNING, "ferry.packaging.revocation")
    with pytest.raises(RevokedSigner):
        signature.verify(DATA, sig_by(pki, 0), ring)
    assert "expired" in caplog.text
    caplog.clear()
    signature.verify(DATA, sig_by(pki, 1), ring)  # not listed: accepted, with the warning
    assert "its revocations still apply" in caplog.text


def test_historical_verify_ignores_crls_and_validity(pki):
    ca, ca_key, signers, _ = pki
    ring = Keyring.from_pem(devpki.cert_pem(ca) + crl_pem(
        make_crl(ca, ca_key, [signers[0].serial_number])))
    signature.verify(DATA, sig_by(pki, 0), ring, historical=True)
    later = NOW + dt.timedelta(days=20000)
    signature.verify(DATA, sig_by(pki, 1), ring, now=later, historical=True)


def test_crl_files_in_the_keyring_directory(pki, tmp_path: Path):
    ca, ca_key, signers, _ = pki
    (tmp_path / "keyring.pem").write_bytes(b"ferry-keyring-version: 7\n" + devpki.cert_pem(ca))
    ring = load_keyring(tmp_path / "keyring.pem")
    assert ring.version == 7 and ring.crls == ()
    crl = make_crl(ca, ca_key, [signers[1].serial_number])
    (tmp_path / "fleet.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    ring = load_keyring(tmp_path / "keyring.pem")
    with pytest.raises(RevokedSigner, match="CN=signer 1"):
        signature.verify(DATA, sig_by(pki, 1), ring)
    (tmp_path / "junk.crl").write_bytes(b"not a crl")
    with pytest.raises(KeyringError, match=r"junk\.crl is neither a PEM nor a DER"):
        load_keyring(tmp_path / "keyring.pem")


def test_malformed_crl_block_refuses_the_keyring(pki):
    ca = pki[0]
    bad = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    with pytest.raises(KeyringError, match="malformed CRL"):
        Keyring.from_pem(devpki.cert_pem(ca) + bad)


def test_two_stated_versions_refuse_the_keyring(pki):
    ca = pki[0]
    with pytest.raises(KeyringError, match="more than one"):
        Keyring.from_pem(b"ferry-keyring-version: 1\nferry-keyring-version: 2\n"
                         + devpki.cert_pem(ca))


@pytest.mark.parametrize("revoke", [None, "signer", "intermediate"])
def test_same_decision_as_openssl_verify_crl_check(revoke, tmp_path: Path):
    """openssl verify -crl_check_all with the same anchors, chain and CRLs: revoked
    exactly when ferry refuses."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is installed by .ci/deps/base.apt"
    ca_key = devpki.new_key("rsa")
    ca = devpki.make_cert("Peer CA", ca_key, ca=True)
    ikey = devpki.new_key("ec")
    inter = devpki.make_cert("Peer Build CA", ikey, issuer=(ca, ca_key), ca=True)
    lkey = devpki.new_key("ec")
    leaf = devpki.make_cert("peer leaf", lkey, issuer=(inter, ikey))
    root_crl = make_crl(ca, ca_key, [inter.serial_number] if revoke == "intermediate" else [])
    inter_crl = make_crl(inter, ikey, [leaf.serial_number] if revoke == "signer" else [])
    crls = crl_pem(root_crl) + crl_pem(inter_crl)
    (tmp_path / "ca.pem").write_bytes(devpki.cert_pem(ca))
    (tmp_path / "inter.pem").write_bytes(devpki.cert_pem(inter))
    (tmp_path / "leaf.pem").write_bytes(devpki.cert_pem(leaf))
    (tmp_path / "crls.pem").write_bytes(crls)
    res = subprocess.run(
        [openssl, "verify", "-crl_check_all", "-CAfile", str(tmp_path / "ca.pem"),
         "-untrusted", str(tmp_path / "inter.pem"), "-CRLfile", str(tmp_path / "crls.pem"),
         str(tmp_path / "leaf.pem")], capture_output=True, text=True)
    openssl_revoked = "certificate revoked" in res.stdout + res.stderr
    assert (res.returncode == 0) == (not openssl_revoked), res.stdout + res.stderr
    sig = signature.sign(DATA, lkey, leaf, extra_certs=[inter])
    ring = Keyring.from_pem(devpki.cert_pem(ca) + crls)
    try:
        signature.verify(DATA, sig, ring)
        ferry_revoked = False
    except RevokedSigner:
        ferry_revoked = True
    assert ferry_revoked == openssl_revoked == (revoke is not None)
