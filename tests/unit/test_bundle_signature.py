"""CMS signature verification: algorithms, the X.509 path and each way a signer is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ferry.packaging import devpki, signature
from ferry.packaging.errors import BadSignature, ExpiredSigner, KeyringError, UntrustedSigner
from ferry.packaging.keyring import Keyring, load_keyring

DATA = b'software = { version = "1"; };\n'
NOW = dt.datetime.now(dt.UTC)


def ring(*certs):
    return Keyring.from_pem(b"".join(devpki.cert_pem(c) for c in certs))


@pytest.fixture(scope="module")
def ec_ca():
    key = devpki.new_key("ec")
    return devpki.make_cert("EC CA", key, ca=True), key


@pytest.fixture(scope="module")
def rsa_ca():
    key = devpki.new_key("rsa")
    return devpki.make_cert("RSA CA", key, ca=True), key


@pytest.mark.parametrize("kind,pss", [("ec", False), ("rsa", False), ("rsa", True)])
def test_algorithms_verify(kind, pss, ec_ca, rsa_ca):
    ca = ec_ca if kind == "ec" else rsa_ca
    key = devpki.new_key(kind)
    cert = devpki.make_cert("signer", key, issuer=ca)
    sig = signature.sign(DATA, key, cert, pss=pss)
    info = signature.verify(DATA, sig, ring(ca[0]))
    assert info.subject == "CN=signer,O=ferry development"
    with pytest.raises(BadSignature):
        signature.verify(DATA + b" ", sig, ring(ca[0]))


def test_pss_signed_certificate_chain(rsa_ca):
    key = devpki.new_key("rsa")
    cert = devpki.make_cert("pss signer", key, issuer=rsa_ca, pss=True)
    sig = signature.sign(DATA, key, cert, pss=True)
    assert signature.verify(DATA, sig, ring(rsa_ca[0])).subject.startswith("CN=pss signer")


def test_intermediate_chain(ec_ca):
    ikey = devpki.new_key("ec")
    inter = devpki.make_cert("intermediate", ikey, issuer=ec_ca, ca=True, path_length=0)
    key = devpki.new_key("ec")
    cert = devpki.make_cert("leaf", key, issuer=(inter, ikey))
    sig = signature.sign(DATA, key, cert, extra_certs=[inter])
    signature.verify(DATA, sig, ring(ec_ca[0]))
    # Without the intermediate in the CMS, there is no path.
    with pytest.raises(UntrustedSigner):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(ec_ca[0]))


def test_intermediate_that_is_not_a_ca_is_refused(ec_ca):
    ikey = devpki.new_key("ec")
    inter = devpki.make_cert(
        "not a CA", ikey, issuer=ec_ca, ca=False, eku=[ExtendedKeyUsageOID.CODE_SIGNING]
    )
    key = devpki.new_key("ec")
    cert = devpki.make_cert("leaf", key, issuer=(inter, ikey))
    sig = signature.sign(DATA, key, cert, extra_certs=[inter])
    with pytest.raises(UntrustedSigner, match="not a CA"):
        signature.verify(DATA, sig, ring(ec_ca[0]))


def test_path_length_is_enforced(ec_ca):
    k1, k2, k3 = (devpki.new_key("ec") for _ in range(3))
    i1 = devpki.make_cert("i1", k1, issuer=ec_ca, ca=True, path_length=0)
    i2 = devpki.make_cert("i2", k2, issuer=(i1, k1), ca=True, path_length=0)
    leaf = devpki.make_cert("leaf", k3, issuer=(i2, k2))
    sig = signature.sign(DATA, k3, leaf, extra_certs=[i2, i1])
    with pytest.raises(UntrustedSigner, match="path length"):
        signature.verify(DATA, sig, ring(ec_ca[0]))


def test_ca_without_keycertsign_is_refused():
    ca_key = devpki.new_key("ec")
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    ca = devpki.make_cert("CA no certsign", ca_key, ca=True, key_usage=usage)
    key = devpki.new_key("ec")
    cert = devpki.make_cert("leaf", key, issuer=(ca, ca_key))
    with pytest.raises(UntrustedSigner, match="keyUsage"):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(ca))


def test_signer_with_wrong_eku_is_refused(ec_ca):
    key = devpki.new_key("ec")
    cert = devpki.make_cert("tls", key, issuer=ec_ca, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(UntrustedSigner, match="extendedKeyUsage"):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(ec_ca[0]))


def test_signer_without_digital_signature_usage_is_refused(ec_ca):
    key = devpki.new_key("ec")
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    cert = devpki.make_cert("enc only", key, issuer=ec_ca, key_usage=usage)
    with pytest.raises(UntrustedSigner, match="digitalSignature"):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(ec_ca[0]))


def test_expired_signer_and_expired_ca(ec_ca):
    key = devpki.new_key("ec")
    old = devpki.make_cert(
        "old", key, issuer=ec_ca,
        not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1),
    )  # fmt: skip
    with pytest.raises(ExpiredSigner, match="valid only"):
        signature.verify(DATA, signature.sign(DATA, key, old), ring(ec_ca[0]))
    future = devpki.make_cert("future", key, issuer=ec_ca, not_before=NOW + dt.timedelta(days=2))
    with pytest.raises(ExpiredSigner):
        signature.verify(DATA, signature.sign(DATA, key, future), ring(ec_ca[0]))
    ca_key = devpki.new_key("ec")
    old_ca = devpki.make_cert(
        "old CA", ca_key, ca=True,
        not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1),
    )  # fmt: skip
    cert = devpki.make_cert(
        "leaf", key, issuer=(old_ca, ca_key),
        not_before=NOW - dt.timedelta(days=20), not_after=NOW + dt.timedelta(days=1),
    )  # fmt: skip
    with pytest.raises(ExpiredSigner, match="CA certificate"):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(old_ca))
    # The check uses the time it is given: in the past the same pair is fine.
    signature.verify(
        DATA, signature.sign(DATA, key, cert), ring(old_ca), now=NOW - dt.timedelta(days=10)
    )


def test_pinned_self_signed_signer_is_trusted():
    key = devpki.new_key("ec")
    cert = devpki.make_cert("self", key, eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION])
    signature.verify(DATA, signature.sign(DATA, key, cert), ring(cert))


def test_signer_from_another_ca_is_untrusted(ec_ca, rsa_ca):
    key = devpki.new_key("ec")
    cert = devpki.make_cert("s", key, issuer=ec_ca)
    with pytest.raises(UntrustedSigner, match="does not chain"):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(rsa_ca[0]))


def test_rsa_signature_flips_are_rejected(rsa_ca):
    key = devpki.new_key("rsa")
    cert = devpki.make_cert("s", key, issuer=rsa_ca)
    sig = signature.sign(DATA, key, cert)
    for pos in range(0, len(sig), 9):
        bad = bytearray(sig)
        bad[pos] ^= 0x04
        with pytest.raises((BadSignature, UntrustedSigner, ExpiredSigner)):
            signature.verify(DATA, bytes(bad), ring(rsa_ca[0]))


def test_embedded_signer_reads_subject(ec_ca):
    key = devpki.new_key("ec")
    cert = devpki.make_cert("who", key, issuer=ec_ca)
    assert signature.embedded_signer(signature.sign(DATA, key, cert)).startswith("CN=who")
    assert signature.embedded_signer(b"garbage") is None


def test_keyring_errors(tmp_path):
    with pytest.raises(KeyringError, match="cannot read"):
        load_keyring(tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(KeyringError, match="no PEM certificate"):
        load_keyring(bad)
