"""CMS SignedData over sw-description when the private key is out of reach.

``signature.sign`` hands a software key to ``cryptography``'s PKCS#7 builder, but a key
in a PKCS#11 token (packaging/pkcs11.py) never leaves it: the token only signs a digest.
So this module assembles the same structure byte for byte in the shape the builder
produces (v1 SignedData, detached, sha256 with NULL parameters, signed attributes
contentType, signingTime and messageDigest in DER order, certificates embedded, no
S/MIME capabilities) and asks a ``RawSigner`` for the one signature over the signed
attributes. The verify path (``signature.verify``), ``openssl cms -verify`` and SWUpdate
then cannot tell the two apart.

Before returning, the signature is checked against the certificate's public key: a token
key that does not belong to ``--cert`` fails the build here with one line, instead of
producing a bundle every gateway refuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Literal, Protocol

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ferry.packaging.certpolicy import describe
from ferry.packaging.errors import BundleCreateError

Scheme = Literal["pkcs1v15", "pss", "ecdsa"]
PSS_SALT = 32  # as signature.sign: salt of the digest's length, MGF1 with SHA-256


class RawSigner(Protocol):
    """Signs a SHA-256 digest; ECDSA signatures come back DER-encoded (as CMS wants)."""

    def sign_digest(self, digest: bytes, scheme: Scheme) -> bytes: ...


def scheme_for(cert: x509.Certificate, pss: bool) -> Scheme:
    """The signature scheme the certificate's key calls for (PSS only on request)."""
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return "pss" if pss else "pkcs1v15"
    if isinstance(public, ec.EllipticCurvePublicKey):
        if pss:
            raise BundleCreateError("--pss needs an RSA key; the signer's key is EC")
        return "ecdsa"
    raise BundleCreateError(
        f"certificate {describe(cert)}: only RSA and EC keys can sign bundles"
    )


def _sha256() -> dict[str, object]:
    return {"algorithm": "sha256", "parameters": core.Null()}  # explicit NULL, as openssl


def _signature_algorithm(scheme: Scheme) -> cms.SignedDigestAlgorithm:
    if scheme == "pkcs1v15":
        return cms.SignedDigestAlgorithm(
            {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
        )
    if scheme == "ecdsa":
        return cms.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    sha256 = _sha256()
    return cms.SignedDigestAlgorithm(
        {
            "algorithm": "rsassa_pss",
            "parameters": algos.RSASSAPSSParams(
                {
                    "hash_algorithm": sha256,
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
                    "salt_length": PSS_SALT,
                }
            ),
        }
    )


def _signed_attrs(data: bytes, now: dt.datetime) -> cms.CMSAttributes:
    attrs = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute(
            {"type": "signing_time", "values": [cms.Time({"utc_time": now})]}
        ),
        cms.CMSAttribute(
            {"type": "message_digest", "values": [hashlib.sha256(data).digest()]}
        ),
    ]
    # DER orders a SET OF by encoding; asn1crypto keeps the order it is given
    attrs.sort(key=lambda a: a.dump())
    return cms.CMSAttributes(attrs)


def check_signature(cert: x509.Certificate, scheme: Scheme, sig: bytes, message: bytes) -> None:
    """Raise BundleCreateError unless ``sig`` over ``message`` verifies under ``cert``."""
    public = cert.public_key()
    try:
        if scheme == "ecdsa" and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        elif scheme == "pkcs1v15" and isinstance(public, rsa.RSAPublicKey):
            public.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        elif scheme == "pss" and isinstance(public, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT)
            public.verify(sig, message, pss, hashes.SHA256())
        else:
            raise InvalidSignature
    except (InvalidSignature, ValueError):
        raise BundleCreateError(
            f"the token's key does not belong to certificate {describe(cert)}: its "
            "signature does not verify under the certificate's public key"
        ) from None


def sign_external(
    data: bytes,
    signer: RawSigner,
    cert: x509.Certificate,
    *,
    extra_certs: Sequence[x509.Certificate] = (),
    pss: bool = False,
    now: dt.datetime | None = None,
) -> bytes:
    """DER CMS SignedData, detached, with ``signer`` doing the private-key operation."""
    scheme = scheme_for(cert, pss)
    attrs = _signed_attrs(data, (now or dt.datetime.now(dt.UTC)).replace(microsecond=0))
    message = b"\x31" + attrs.dump()[1:]  # signed as SET OF, stored as [0] IMPLICIT
    sig = signer.sign_digest(hashlib.sha256(message).digest(), scheme)
    check_signature(cert, scheme, sig, message)
    der = cert.public_bytes(serialization.Encoding.DER)
    parsed = asn1_x509.Certificate.load(der)
    sha256 = _sha256()
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": parsed.issuer,
                        "serial_number": parsed.serial_number,
                    }
                }
            ),
            "digest_algorithm": sha256,
            "signed_attrs": attrs,
            "signature_algorithm": _signature_algorithm(scheme),
            "signature": sig,
        }
    )
    certs = [parsed] + [
        asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
        for c in extra_certs
    ]
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [sha256],
            "encap_content_info": {"content_type": "data"},
            "certificates": certs,
            "signer_infos": [signer_info],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
