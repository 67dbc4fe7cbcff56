"""X.509 rules beyond the path: SHA-1/MD5 certificate signatures and unknown critical
extensions are refused by name, wherever on the path the certificate sits.

cryptography (rightly) refuses to *sign* a certificate with SHA-1 or MD5, so the weak
certificates here are built by re-signing a good certificate's TBS part by hand with
asn1crypto: the bytes a legacy CA would have produced.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from ferry.packaging import devpki, signature
from ferry.packaging.errors import (
    KeyringError,
    UnknownCriticalExtension,
    UntrustedSigner,
    WeakCertificate,
)
from ferry.packaging.keyring import Keyring

DATA = b'software = { version = "1"; };\n'
PRIVATE_OID = ObjectIdentifier("1.3.6.1.4.1.55555.7")


def ring(*certs: x509.Certificate) -> Keyring:
    return Keyring.from_pem(b"".join(devpki.cert_pem(c) for c in certs))


def resign(cert: x509.Certificate, issuer_key: devpki.PrivateKey, digest: str) -> x509.Certificate:
    """``cert`` with its signature redone over the same TBS with ``digest`` (sha1, md5)."""
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    is_rsa = isinstance(issuer_key, rsa.RSAPrivateKey)
    algo = asn1_x509.SignedDigestAlgorithm(
        {"algorithm": f"{digest}_{'rsa' if is_rsa else 'ecdsa'}"}
    )
    tbs = parsed["tbs_certificate"]
    tbs["signature"] = algo
    tbs_der = tbs.dump(force=True)
    hash_algo = {"sha1": hashes.SHA1(), "md5": hashes.MD5()}[digest]
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        value = issuer_key.sign(tbs_der, padding.PKCS1v15(), hash_algo)
    else:
        value = issuer_key.sign(tbs_der, ec.ECDSA(hash_algo))
    weak = asn1_x509.Certificate({
        "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
        "signature_algorithm": algo,
        "signature_value": value,
    })
    return x509.load_der_x509_certificate(weak.dump())


def with_extension(
    common_name: str, key: devpki.PrivateKey, ext: x509.ExtensionType, *,
    issuer: tuple[x509.Certificate, devpki.PrivateKey] | None = None, ca: bool = False,
) -> x509.Certificate:  # fmt: skip
    """A devpki-shaped certificate plus one extra critical extension."""
    base = devpki.make_cert(common_name, key, issuer=issuer, ca=ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(base.subject)
        .issuer_name(base.issuer)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(base.serial_number)
        .not_valid_before(base.not_valid_before_utc)
        .not_valid_after(base.not_valid_after_utc)
    )
    for existing in base.extensions:
        builder = builder.add_extension(existing.value, existing.critical)
    builder = builder.add_extension(ext, critical=True)
    signing_key = issuer[1] if issuer else key
    return builder.sign(signing_key, hashes.SHA256())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rsa_ca():
    key = devpki.new_key("rsa")
    return devpki.make_cert("RSA CA", key, ca=True), key


@pytest.fixture(scope="module")
def ec_ca():
    key = devpki.new_key("ec")
    return devpki.make_cert("EC CA", key, ca=True), key


@pytest.mark.parametrize("kind,digest,label", [
    ("rsa", "sha1", "SHA-1"), ("rsa", "md5", "MD5"), ("ec", "sha1", "SHA-1"),
])  # fmt: skip
def test_signer_signed_with_broken_digest_is_refused_by_name(
    kind, digest, label, rsa_ca, ec_ca
):  # fmt: skip
    ca, ca_key = rsa_ca if kind == "rsa" else ec_ca
    key = devpki.new_key(kind)
    good = devpki.make_cert("legacy signer", key, issuer=(ca, ca_key))
    signature.verify(DATA, signature.sign(DATA, key, good), ring(ca))  # the control
    weak = resign(good, ca_key, digest)
    assert weak.signature_hash_algorithm.name == digest
    with pytest.raises(WeakCertificate, match=f"signer certificate .* is signed with {label}"):
        signature.verify(DATA, signature.sign(DATA, key, weak), ring(ca))


def test_sha1_intermediate_is_refused_by_name(rsa_ca):
    ca, ca_key = rsa_ca
    ikey = devpki.new_key("rsa")
    inter = resign(
        devpki.make_cert("sha1 intermediate", ikey, issuer=rsa_ca, ca=True), ca_key, "sha1"
    )
    key = devpki.new_key("rsa")
    leaf = devpki.make_cert("leaf", key, issuer=(inter, ikey))
    sig = signature.sign(DATA, key, leaf, extra_certs=[inter])
    with pytest.raises(WeakCertificate, match=r"intermediate CA certificate .* SHA-1"):
        signature.verify(DATA, sig, ring(ca))


def test_sha1_anchor_is_refused_and_a_keyring_of_only_weak_anchors_does_not_load(rsa_ca):
    ca_key = devpki.new_key("rsa")
    weak_ca = resign(devpki.make_cert("old root", ca_key, ca=True), ca_key, "sha1")
    key = devpki.new_key("rsa")
    leaf = devpki.make_cert("leaf", key, issuer=(weak_ca, ca_key))
    sig = signature.sign(DATA, key, leaf)
    with pytest.raises(KeyringError, match=r"no usable CA certificate.*SHA-1"):
        ring(weak_ca)
    # Beside a good anchor the weak one loads, but a path that ends at it is refused.
    mixed = ring(weak_ca, rsa_ca[0])
    assert len(mixed.problems()) == 1
    with pytest.raises(WeakCertificate, match=r"CA certificate .*old root.* SHA-1"):
        signature.verify(DATA, sig, mixed)


def test_pinned_signer_signed_with_sha1_is_refused():
    key = devpki.new_key("rsa")
    pinned = resign(
        devpki.make_cert("self", key, eku=[ExtendedKeyUsageOID.CODE_SIGNING]), key, "sha1"
    )
    good_ca = devpki.make_cert("other", devpki.new_key("ec"), ca=True)
    with pytest.raises(WeakCertificate, match="SHA-1"):
        signature.verify(DATA, signature.sign(DATA, key, pinned), ring(pinned, good_ca))


def test_unknown_critical_extension_on_signer_is_refused(ec_ca):
    key = devpki.new_key("ec")
    ext = x509.UnrecognizedExtension(PRIVATE_OID, b"\x05\x00")
    cert = with_extension("odd signer", key, ext, issuer=ec_ca)
    with pytest.raises(UnknownCriticalExtension, match=r"critical extension .*1\.3\.6\.1\.4\.1"):
        signature.verify(DATA, signature.sign(DATA, key, cert), ring(ec_ca[0]))
    # The same extension marked non-critical is fine: the issuer allowed ignoring it.
    base = devpki.make_cert("fine signer", key, issuer=ec_ca)
    assert not any(e.critical and e.oid == PRIVATE_OID for e in base.extensions)
    signature.verify(DATA, signature.sign(DATA, key, base), ring(ec_ca[0]))


def test_critical_name_constraints_on_intermediate_are_refused(ec_ca):
    ikey = devpki.new_key("ec")
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    inter = with_extension("constrained", ikey, constraints, issuer=ec_ca, ca=True)
    key = devpki.new_key("ec")
    leaf = devpki.make_cert("leaf", key, issuer=(inter, ikey))
    sig = signature.sign(DATA, key, leaf, extra_certs=[inter])
    with pytest.raises(UnknownCriticalExtension, match=r"intermediate CA .*nameConstraints"):
        signature.verify(DATA, sig, ring(ec_ca[0]))


def test_unknown_critical_extension_on_anchor(ec_ca):
    ca_key = devpki.new_key("ec")
    ext = x509.UnrecognizedExtension(PRIVATE_OID, b"\x05\x00")
    odd_ca = with_extension("odd CA", ca_key, ext, ca=True)
    with pytest.raises(KeyringError, match="critical extension"):
        ring(odd_ca)
    key = devpki.new_key("ec")
    leaf = devpki.make_cert("leaf", key, issuer=(odd_ca, ca_key))
    with pytest.raises(UnknownCriticalExtension, match=r"CA certificate .*odd CA"):
        signature.verify(DATA, signature.sign(DATA, key, leaf), ring(odd_ca, ec_ca[0]))


def test_refusals_are_untrusted_signer_subclasses():
    # Callers that sort by UntrustedSigner (journal, backend feedback) still see them so.
    assert issubclass(WeakCertificate, UntrustedSigner)
    assert issubclass(UnknownCriticalExtension, UntrustedSigner)


def _openssl_verify(tmp_path, ca: x509.Certificate, leaf: x509.Certificate) -> tuple[int, str]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is installed by .ci/deps/base.apt"
    (tmp_path / "ca.pem").write_bytes(devpki.cert_pem(ca))
    (tmp_path / "leaf.pem").write_bytes(devpki.cert_pem(leaf))
    proc = subprocess.run(
        [openssl, "verify", "-auth_level", "1", "-purpose", "any",
         "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_openssl_draws_the_same_lines(tmp_path, rsa_ca, ec_ca):
    """An independent verifier agrees: OpenSSL 3 accepts the control, refuses a SHA-1
    signer at security level 1 ("CA signature digest algorithm too weak"), and refuses
    an unknown critical extension ("unhandled critical extension")."""
    ca, ca_key = rsa_ca
    key = devpki.new_key("rsa")
    good = devpki.make_cert("peer signer", key, issuer=rsa_ca)
    code, out = _openssl_verify(tmp_path, ca, good)
    assert code == 0, out
    code, out = _openssl_verify(tmp_path, ca, resign(good, ca_key, "sha1"))
    assert code != 0 and "too weak" in out, out
    ekey = devpki.new_key("ec")
    odd = with_extension(
        "odd", ekey, x509.UnrecognizedExtension(PRIVATE_OID, b"\x05\x00"), issuer=ec_ca
    )
    code, out = _openssl_verify(tmp_path, ec_ca[0], odd)
    assert code != 0 and "unhandled critical extension" in out, out
