"""Which X.509 certificates ferry accepts on a signing path at all, before any path logic.

Two rules from RFC 5280 and from what OpenSSL enforces at its default security level, made
explicit so a refusal says why instead of ending in "does not chain to the keyring":

- a certificate signed with SHA-1 or MD5 (or an algorithm ferry cannot check) is refused:
  collisions in those hashes let an attacker get a CA to sign one certificate and use the
  signature on another. The rule applies to every certificate on the path, the keyring
  anchor and a pinned signer included, so a keyring cannot quietly rest on a weak one.
- a certificate with a *critical* extension ferry does not process is refused: the issuer
  marked it "refuse me if you do not understand this" (RFC 5280, 4.2). ferry processes
  basicConstraints, keyUsage and extendedKeyUsage, links certificates by their key
  identifiers, and ignores names and policies (it matches no names and requires no
  policy, as ``openssl cms -verify`` by default), so those may be critical; nameConstraints,
  policyConstraints, policyMappings, inhibitAnyPolicy and anything unknown may not.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from ferry.packaging.errors import UnknownCriticalExtension, WeakCertificate, shown

# Critical extensions whose meaning ferry honours (or that constrain nothing it decides).
PROCESSED_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
})
_BROKEN_HASHES = {"sha1": "SHA-1", "md5": "MD5"}
_ACCEPTED_HASHES = ("sha224", "sha256", "sha384", "sha512",
                    "sha3-224", "sha3-256", "sha3-384", "sha3-512")


def describe(cert: x509.Certificate) -> str:
    """The subject for a one-line message, cut short (a hostile one can be long)."""
    try:
        return shown(cert.subject.rfc4514_string(), 80)
    except ValueError:
        return "(unreadable subject)"


def check_signature_algorithm(cert: x509.Certificate, role: str) -> None:
    """Refuse a certificate whose own signature uses a broken or unknown digest."""
    oid = cert.signature_algorithm_oid.dotted_string
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise WeakCertificate(
            f"{role} certificate {describe(cert)} is signed with an algorithm ferry does not "
            f"accept (OID {oid}); reissue it with SHA-256"
        ) from None
    if digest is None:  # Ed25519/Ed448 sign the message itself: no separate digest
        return
    name = digest.name
    if name in _BROKEN_HASHES:
        raise WeakCertificate(
            f"{role} certificate {describe(cert)} is signed with {_BROKEN_HASHES[name]}, "
            "which is broken; reissue it with SHA-256"
        )
    if name not in _ACCEPTED_HASHES:
        raise WeakCertificate(
            f"{role} certificate {describe(cert)} is signed with digest {shown(name)}, which "
            "ferry does not accept; reissue it with SHA-256"
        )


def check_critical_extensions(cert: x509.Certificate, role: str) -> None:
    """Refuse a certificate that carries a critical extension ferry does not process."""
    try:
        extensions = list(cert.extensions)
    except ValueError:
        raise UnknownCriticalExtension(
            f"{role} certificate {describe(cert)} has malformed or duplicate extensions"
        ) from None
    for ext in extensions:
        if ext.critical and ext.oid not in PROCESSED_CRITICAL:
            known = getattr(ext.oid, "_name", "Unknown OID")
            label = ext.oid.dotted_string + ("" if known == "Unknown OID" else f", {known}")
            raise UnknownCriticalExtension(
                f"{role} certificate {describe(cert)} has a critical extension ferry does "
                f"not process ({label}); reissue it without that extension or not critical"
            )


def check_certificate(cert: x509.Certificate, role: str) -> None:
    """Both rules; ``role`` ("signer", "intermediate CA", "CA") names it in the message."""
    check_signature_algorithm(cert, role)
    check_critical_extensions(cert, role)
