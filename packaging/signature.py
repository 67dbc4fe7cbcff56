"""CMS (PKCS#7) detached signatures over sw-description: sign with ``cryptography``,
verify by parsing the CMS structure with asn1crypto and checking every signature with
``cryptography`` (which has no PKCS#7 verify of its own).

Verification follows what SWUpdate and ``openssl cms -verify`` check: the signed
attributes (content type, messageDigest over the exact sw-description bytes), the
signature over those attributes, and an X.509 path from the signer certificate to a
keyring anchor with validity periods, CA basicConstraints (and path length), keyUsage
and extendedKeyUsage. Every link of that path is looked up on its issuer's CRLs from the
keyring (packaging/revocation.py), so a revoked signer is refused by name and serial.

``historical=True`` re-checks a statement the gateway accepted in the past (a keyring
rotation replayed from the factory keyring, packaging/keyringupdate.py): signatures and
the path still must hold, but validity periods and CRLs are those of the day it was
accepted, which the gateway cannot know, so they are not checked again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ferry.packaging.certpolicy import check_certificate, describe
from ferry.packaging.errors import BadSignature, BundleError, ExpiredSigner, UntrustedSigner
from ferry.packaging.keyring import Keyring
from ferry.packaging.revocation import check_not_revoked

MAX_CHAIN = 8
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha224": hashes.SHA224,
}
# A signer cert with an EKU must allow one of these (SWUpdate's default purpose is
# emailProtection; RAUC and others use codeSigning).
_SIGNER_EKUS = {
    ExtendedKeyUsageOID.EMAIL_PROTECTION,
    ExtendedKeyUsageOID.CODE_SIGNING,
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}


@dataclass(frozen=True)
class SignerInfo:
    subject: str
    certificate: x509.Certificate
    # the keyring anchors the signature's SignerInfos chain to, each once (a pinned signer
    # is its own anchor): what a k-of-n rule for keyring changes counts
    anchors: tuple[x509.Certificate, ...] = ()


# -- signing -----------------------------------------------------------------------------
def sign(
    data: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    extra_certs: Sequence[x509.Certificate] = (),
    pss: bool = False,
) -> bytes:
    """DER CMS SignedData, detached, binary, signer certificate (and chain) included."""
    # signing only (ferry bundle create): pkcs7 pulls in the email package
    from cryptography.hazmat.primitives.serialization import pkcs7

    builder = pkcs7.PKCS7SignatureBuilder().set_data(data)
    if pss:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("PSS needs an RSA key")
        pss_padding = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        builder = builder.add_signer(cert, key, hashes.SHA256(), rsa_padding=pss_padding)
    else:
        builder = builder.add_signer(cert, key, hashes.SHA256())
    for extra in extra_certs:
        builder = builder.add_certificate(extra)
    return builder.sign(
        serialization.Encoding.DER,
        [
            pkcs7.PKCS7Options.DetachedSignature,
            pkcs7.PKCS7Options.Binary,
            pkcs7.PKCS7Options.NoCapabilities,
        ],
    )


# -- verifying ---------------------------------------------------------------------------
def _hash_name(algo: str) -> type[hashes.HashAlgorithm]:
    try:
        return _HASHES[algo]
    except KeyError:
        raise BadSignature(f"signature uses unsupported digest {algo!r}") from None


def _verify_raw(
    cert: x509.Certificate, sig_algo: cms.SignedDigestAlgorithm, digest: str, signature: bytes,
    message: bytes,
) -> None:  # fmt: skip
    public = cert.public_key()
    algo = sig_algo.signature_algo
    hash_cls = _hash_name(digest)
    try:
        if algo == "rsassa_pkcs1v15" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), hash_cls())
        elif algo == "rsassa_pss" and isinstance(public, rsa.RSAPublicKey):
            params = sig_algo["parameters"]
            pss_hash = _hash_name(params["hash_algorithm"]["algorithm"].native)
            mgf = params["mask_gen_algorithm"]
            if mgf["algorithm"].native != "mgf1":
                raise BadSignature("RSA-PSS signature uses an unsupported mask function")
            mgf_hash = _hash_name(mgf["parameters"]["algorithm"].native)
            salt = int(params["salt_length"].native)
            public.verify(
                signature,
                message,
                padding.PSS(mgf=padding.MGF1(mgf_hash()), salt_length=salt),
                pss_hash(),
            )
        elif algo == "ecdsa" and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hash_cls()))
        else:
            raise BadSignature(
                f"signature algorithm {algo} does not match the signer's "
                f"{type(public).__name__} key"
            )
    except InvalidSignature:
        raise BadSignature(
            "sw-description.sig does not match sw-description: the bundle was modified "
            "or signed with another key"
        ) from None
    except (UnsupportedAlgorithm, ValueError) as err:
        raise BadSignature(f"signature cannot be checked: {err}") from None


def _find_signer(sid: cms.SignerIdentifier, certs: Sequence[x509.Certificate]) -> x509.Certificate:
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if (
                cert.serial_number == ias["serial_number"].native
                and cert.issuer.public_bytes() == ias["issuer"].dump()
            ):
                return cert
        else:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == sid.chosen.native:
                return cert
    raise UntrustedSigner(
        "sw-description.sig does not include the signer's certificate; sign with the "
        "certificate embedded"
    )


def _check_validity(cert: x509.Certificate, now: dt.datetime, role: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ExpiredSigner(
            f"{role} certificate {describe(cert)} is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}; "
            "check the clock or re-sign the bundle"
        )


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise UntrustedSigner(
            f"certificate {describe(cert)} has malformed extensions"
        ) from None


def _check_ca(cert: x509.Certificate, below: int) -> None:
    """``below``: number of CA certificates between this one and the signer."""
    name = describe(cert)
    bc = _ext(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise UntrustedSigner(f"issuer {name} is not a CA (basicConstraints CA:TRUE missing)")
    if bc.path_length is not None and below > bc.path_length:
        raise UntrustedSigner(f"issuer {name} path length {bc.path_length} exceeded")
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise UntrustedSigner(f"issuer {name} may not sign certificates (keyUsage)")


def _check_leaf(cert: x509.Certificate) -> None:
    name = describe(cert)
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not (ku.digital_signature or ku.content_commitment):
        raise UntrustedSigner(f"signer {name} keyUsage does not allow digitalSignature")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and not _SIGNER_EKUS & set(eku):
        raise UntrustedSigner(
            f"signer {name} extendedKeyUsage allows neither emailProtection nor codeSigning"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def verify_chain(
    signer: x509.Certificate,
    pool: Sequence[x509.Certificate],
    keyring: Keyring,
    now: dt.datetime,
    *,
    historical: bool = False,
) -> x509.Certificate:
    """An X.509 path from ``signer`` through ``pool`` (intermediates) to a keyring anchor.

    Every certificate on it must pass ``certpolicy`` (no SHA-1/MD5 signature, no critical
    extension ferry does not process); a candidate issuer that fails is passed over, and
    its reason is what the refusal says when no other candidate completes the path.
    Each link is checked against its issuer's CRLs in the keyring (not when
    ``historical``: see the module docstring). Returns the anchor the path ends at.
    """
    check_certificate(signer, "signer")
    _check_leaf(signer)
    if not historical:
        _check_validity(signer, now, "signer")
    anchors_der = {a.public_bytes(serialization.Encoding.DER) for a in keyring.anchors}
    if signer.public_bytes(serialization.Encoding.DER) in anchors_der:
        return signer  # the signer itself is pinned in the keyring
    current = signer
    seen = {signer.fingerprint(hashes.SHA256())}
    refused: UntrustedSigner | None = None
    for depth in range(MAX_CHAIN):
        for anchor in keyring.anchors:
            if _issued_by(current, anchor):
                try:
                    check_certificate(anchor, "CA")
                except UntrustedSigner as err:
                    refused = refused or err
                    continue
                _check_ca(anchor, depth)
                if not historical:
                    _check_validity(anchor, now, "CA")
                    check_not_revoked(current, anchor, keyring.crls, now,
                                      "signer" if depth == 0 else "intermediate CA")
                return anchor
        issuer = None
        for cand in pool:
            if cand.fingerprint(hashes.SHA256()) in seen or not _issued_by(current, cand):
                continue
            try:
                check_certificate(cand, "intermediate CA")
            except UntrustedSigner as err:
                refused = refused or err
                continue
            issuer = cand
            break
        if issuer is None:
            break
        _check_ca(issuer, depth)
        if not historical:
            _check_validity(issuer, now, "intermediate CA")
            check_not_revoked(current, issuer, keyring.crls, now,
                              "signer" if depth == 0 else "intermediate CA")
        seen.add(issuer.fingerprint(hashes.SHA256()))
        current = issuer
    if refused is not None:
        raise refused
    raise UntrustedSigner(
        f"signer {describe(signer)} does not chain to the keyring "
        f"{keyring.source}; sign with a certificate issued by a trusted CA"
    )


def _load_signed_data(sig: bytes) -> cms.SignedData:
    try:
        info = cms.ContentInfo.load(sig, strict=True)
        if info["content_type"].native != "signed_data":
            raise BadSignature("sw-description.sig is CMS but not SignedData")
        signed = info["content"]
        signed.native  # noqa: B018 -- force a full parse so garbage fails here
    except BadSignature:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        detail = " ".join(str(err).split())[:200]
        raise BadSignature(f"sw-description.sig is not a DER CMS signature ({detail})") from None
    return signed


def verify(
    content: bytes,
    sig: bytes,
    keyring: Keyring,
    *,
    now: dt.datetime | None = None,
    historical: bool = False,
) -> SignerInfo:
    """Check ``sig`` over ``content``; return the signer or raise a typed BundleError."""
    try:
        return _verify(content, sig, keyring, now or dt.datetime.now(dt.UTC), historical)
    except BundleError:
        raise
    except Exception as err:
        detail = " ".join(str(err).split())[:200]
        raise BadSignature(
            f"sw-description.sig cannot be checked ({type(err).__name__}: {detail})"
        ) from None


def _params_null_or_absent(algo: Any) -> bool:
    params = algo["parameters"]
    return params.native is None and params.contents in (None, b"")


def _check_structure(sig: bytes, signed: cms.SignedData) -> None:
    """Refuse every encoding freedom an attacker could use to alter unsigned bytes of the
    signature while it still verifies: non-DER encodings, odd versions, stray algorithm
    parameters, digest lists that disagree with the signer."""
    if cms.ContentInfo.load(sig).dump(force=True) != sig:
        raise BadSignature("sw-description.sig is not canonical DER")
    if signed["version"].native not in ("v1", "v3"):
        raise BadSignature("sw-description.sig has an unexpected SignedData version")
    listed = set()
    for algo in signed["digest_algorithms"]:
        if algo["algorithm"].native not in _HASHES or not _params_null_or_absent(algo):
            raise BadSignature("sw-description.sig lists an unsupported digest algorithm")
        listed.add(algo["algorithm"].native)
    for info in signed["signer_infos"]:
        want = "v1" if info["sid"].name == "issuer_and_serial_number" else "v3"
        if info["version"].native != want:
            raise BadSignature("sw-description.sig has a SignerInfo with the wrong version")
        digest = info["digest_algorithm"]
        if digest["algorithm"].native not in listed or not _params_null_or_absent(digest):
            raise BadSignature("signer's digest algorithm is not among the listed ones")
        sig_algo = info["signature_algorithm"]
        name = sig_algo["algorithm"].native
        if name == "rsassa_pss":
            continue  # parameters are parsed and used in _verify_raw
        digest_name = digest["algorithm"].native
        allowed = {
            "rsassa_pkcs1v15": {"rsassa_pkcs1v15", f"{digest_name}_rsa"},
            "ecdsa": {f"{digest_name}_ecdsa"},
        }.get(sig_algo.signature_algo, set())
        if name not in allowed:
            raise BadSignature(f"signature algorithm {name} does not match digest {digest_name}")
        if sig_algo.signature_algo == "ecdsa":
            if sig_algo["parameters"].contents not in (None, b""):
                raise BadSignature("ECDSA signature algorithm must have no parameters")
        elif not _params_null_or_absent(sig_algo):
            raise BadSignature("RSA signature algorithm has unexpected parameters")
        if info["unsigned_attrs"].native:
            raise BadSignature("sw-description.sig carries unsigned attributes")


def _verify(
    content: bytes, sig: bytes, keyring: Keyring, now: dt.datetime, historical: bool
) -> SignerInfo:
    signed = _load_signed_data(sig)
    _check_structure(sig, signed)
    encap = signed["encap_content_info"]
    if encap["content_type"].native != "data":
        raise BadSignature("sw-description.sig does not sign plain data")
    if encap["content"].native is not None and encap["content"].native != content:
        raise BadSignature("sw-description.sig embeds content other than sw-description")
    pool: list[x509.Certificate] = []
    for choice in signed["certificates"] or []:
        if choice.name == "certificate":
            try:
                pool.append(x509.load_der_x509_certificate(choice.chosen.dump()))
            except (ValueError, x509.InvalidVersion):
                raise BadSignature("sw-description.sig carries a malformed certificate") from None
    infos = list(signed["signer_infos"])
    if not infos:
        raise BadSignature("sw-description.sig has no signer")
    first: SignerInfo | None = None
    reached: dict[bytes, x509.Certificate] = {}
    for info in infos:
        cert = _find_signer(info["sid"], pool)
        digest_name = info["digest_algorithm"]["algorithm"].native
        hash_cls = _hash_name(digest_name)
        attrs = info["signed_attrs"]
        if attrs.native is not None and len(attrs):
            values = {a["type"].native: a["values"] for a in attrs}
            ctype = values.get("content_type")
            if ctype is None or ctype[0].native != "data":
                raise BadSignature("signed attributes lack content type 'data'")
            md = values.get("message_digest")
            if md is None:
                raise BadSignature("signed attributes lack messageDigest")
            h = hashlib.new(hash_cls().name, content).digest()
            if md[0].native != h:
                raise BadSignature(
                    "messageDigest does not match sw-description: the bundle was modified"
                )
            message = b"\x31" + attrs.dump()[1:]  # signed over as SET OF, not [0] IMPLICIT
        else:
            message = content
        _verify_raw(
            cert, info["signature_algorithm"], digest_name, info["signature"].native, message
        )
        anchor = verify_chain(cert, pool, keyring, now, historical=historical)
        reached.setdefault(anchor.fingerprint(hashes.SHA256()), anchor)
        if first is None:
            first = SignerInfo(subject=cert.subject.rfc4514_string(), certificate=cert)
    assert first is not None
    return SignerInfo(subject=first.subject, certificate=first.certificate,
                      anchors=tuple(reached.values()))


def embedded_signer(sig: bytes) -> str | None:
    """Subject of the first signer certificate in ``sig``, without checking anything.

    Never raises: ``ferry bundle inspect`` shows it beside an unverified description, and
    a hostile signature must not turn that display into a traceback (the fuzz campaign
    found cryptography's InvalidVersion escaping the narrower list this caught before).
    """
    try:
        signed = _load_signed_data(sig)
        certs = [
            x509.load_der_x509_certificate(c.chosen.dump())
            for c in signed["certificates"] or []
            if c.name == "certificate"
        ]
        return _find_signer(signed["signer_infos"][0]["sid"], certs).subject.rfc4514_string()
    except Exception:  # display only: a certificate it cannot read is simply not shown
        return None
