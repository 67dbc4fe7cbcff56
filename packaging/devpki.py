"""A development PKI: a CA and a signer certificate for bundles.

For bench work, demos and tests only; production keys come from the integrator's own
PKI. The signer carries extendedKeyUsage emailProtection (SWUpdate's default
``--cert-purpose``) and codeSigning, so the same pair works with ferry, SWUpdate and
``openssl cms -verify``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key kind {kind!r}; use ec or rsa")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ferry development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_cert(
    common_name: str,
    key: PrivateKey,
    *,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    ca: bool = False,
    path_length: int | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_usage: x509.KeyUsage | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    basic_constraints: bool = True,
    pss: bool = False,
) -> x509.Certificate:
    """One certificate; self-signed unless ``issuer`` is given. Arguments let tests build
    the bad cases (expired, not a CA, wrong usage) with the same code as the good ones."""
    now = dt.datetime.now(dt.UTC)
    not_before = not_before or now - dt.timedelta(days=1)
    not_after = not_after or now + dt.timedelta(days=3650)
    subject = _name(common_name)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            False,
        )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True
        )
    if key_usage is None:
        key_usage = x509.KeyUsage(
            digital_signature=not ca,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )
    builder = builder.add_extension(key_usage, True)
    if eku is None and not ca:
        eku = [ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CODE_SIGNING]
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), False)
    if pss and isinstance(issuer_key, rsa.RSAPrivateKey):
        return builder.sign(
            issuer_key,
            hashes.SHA256(),
            rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        )
    return builder.sign(issuer_key, hashes.SHA256())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class DevPki:
    ca_cert: Path
    ca_key: Path
    signer_cert: Path
    signer_key: Path


def write_dev_pki(directory: str | Path, *, kind: str = "ec", days: int = 3650) -> DevPki:
    """Write ca.pem, ca.key, signer.pem, signer.key into ``directory`` (keys mode 0600)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(days=days)
    ca_key = new_key(kind)
    ca = make_cert("ferry dev CA", ca_key, ca=True, not_after=until)
    signer_key = new_key(kind)
    signer = make_cert("ferry dev signer", signer_key, issuer=(ca, ca_key), not_after=until)
    pki = DevPki(out / "ca.pem", out / "ca.key", out / "signer.pem", out / "signer.key")
    for path, data, mode in (
        (pki.ca_cert, cert_pem(ca), 0o644),
        (pki.ca_key, key_pem(ca_key), 0o600),
        (pki.signer_cert, cert_pem(signer), 0o644),
        (pki.signer_key, key_pem(signer_key), 0o600),
    ):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return pki
