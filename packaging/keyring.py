"""Trust anchors: the CA certificates a gateway accepts bundle signers from, the CRLs
that revoke signers below them, and the keyring's version.

An anchor must itself pass ``certpolicy`` (no SHA-1/MD5 signature, no critical extension
ferry does not process). A keyring in which no anchor passes is refused when it is loaded,
so a gateway cannot start with a trust store that could never verify a bundle; a keyring
with some failing anchors loads, and a path that ends at one of them is refused with the
anchor's reason.

CRLs travel in the same PEM file (``-----BEGIN X509 CRL-----`` blocks, so a rotated
keyring carries its revocations with it) and, for the factory keyring, as ``*.crl``
files (PEM or DER) in the keyring's directory, where an integrator can drop one without
rebuilding the PEM. The version names one keyring fleet-wide and never goes backwards
(packaging/keyringupdate.py); a keyring file states its own in a text line outside the
PEM blocks, ``ferry-keyring-version: N`` (OpenSSL and ``cryptography`` skip such lines),
so the factory keyring on the read-only rootfs carries it with no config; none means 0.
A rotated keyring's version is the one its bundle's signed sw-description gives.

A keyring may also state ``ferry-keyring-threshold: k``: a bundle that changes the
keyring (carries a new one) must then be signed by SignerInfos that chain to at least k
different anchors of this keyring, a TUF-style k-of-n rule for root changes
(packaging/keyringupdate.py; ``ferry bundle cosign`` adds signatures). Default 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ferry.packaging.certpolicy import check_certificate
from ferry.packaging.errors import KeyringError, UntrustedSigner

_CERT_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)
_VERSION_LINE = re.compile(rb"^#?\s*ferry-keyring-version:\s*(\d{1,9})\s*$", re.MULTILINE)
_THRESHOLD_LINE = re.compile(
    rb"^#?\s*ferry-keyring-threshold:\s*(\d{1,4})\s*$", re.MULTILINE
)
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.+?-----END X509 CRL-----", re.DOTALL)
MAX_CRL_FILE = 4 << 20


@dataclass(frozen=True)
class Keyring:
    anchors: tuple[x509.Certificate, ...]
    source: str = "<memory>"
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    version: int = 0
    threshold: int = 1  # anchors that must sign a bundle carrying a new keyring

    @classmethod
    def from_pem(
        cls,
        data: bytes,
        source: str = "<memory>",
        *,
        version: int | None = None,
        extra_crls: tuple[x509.CertificateRevocationList, ...] = (),
    ) -> Keyring:
        blocks = _CERT_BLOCK.findall(data)
        try:
            certs = [x509.load_pem_x509_certificate(b) for b in blocks]
        except ValueError:
            raise KeyringError(f"keyring {source} holds a malformed PEM certificate") from None
        if not certs:
            raise KeyringError(
                f"keyring {source} holds no PEM certificate; give the CA certificate(s) "
                "that sign bundles"
            )
        problems = unusable_anchors(certs)
        if len(problems) == len(certs):
            raise KeyringError(f"keyring {source} has no usable CA certificate: {problems[0]}")
        crls = tuple(parse_crls(data, source)) + extra_crls
        if version is None:
            version = stated_version(data)
        threshold = stated_threshold(data)
        usable = len(certs) - len(problems)
        if threshold > usable:
            raise KeyringError(
                f"keyring {source} asks for {threshold} signing anchors but has {usable} "
                "usable CA certificate(s)")
        return cls(anchors=tuple(certs), source=source, crls=crls, version=version,
                   threshold=threshold)

    def problems(self) -> list[str]:
        """Why each unusable anchor is refused (for diagnostics; empty when all pass)."""
        return unusable_anchors(self.anchors)


def stated_version(data: bytes) -> int:
    """The ``ferry-keyring-version: N`` line of a keyring file; 0 when it has none."""
    found = _VERSION_LINE.findall(data)
    if len(set(found)) > 1:
        raise KeyringError("keyring states more than one ferry-keyring-version")
    return int(found[0]) if found else 0


def stated_threshold(data: bytes) -> int:
    """The ``ferry-keyring-threshold: k`` line of a keyring file; 1 when it has none."""
    found = _THRESHOLD_LINE.findall(data)
    if len(set(found)) > 1:
        raise KeyringError("keyring states more than one ferry-keyring-threshold")
    value = int(found[0]) if found else 1
    if value < 1:
        raise KeyringError("ferry-keyring-threshold must be at least 1")
    return value


def parse_crls(data: bytes, source: str) -> list[x509.CertificateRevocationList]:
    """Every ``X509 CRL`` PEM block of ``data``; a malformed one refuses the keyring (a
    revocation that silently fails to load would let the revoked signer through)."""
    out = []
    for block in _CRL_BLOCK.findall(data):
        try:
            out.append(x509.load_pem_x509_crl(block))
        except ValueError:
            raise KeyringError(f"keyring {source} holds a malformed CRL") from None
    return out


def load_crl_file(path: Path) -> list[x509.CertificateRevocationList]:
    """One ``*.crl`` file: PEM (one or more blocks) or a single DER CRL."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CRL_FILE + 1)
    except OSError as err:
        raise KeyringError(f"cannot read CRL {path}: {err.strerror}") from None
    if len(data) > MAX_CRL_FILE:
        raise KeyringError(f"CRL {path} is over {MAX_CRL_FILE} bytes")
    if b"-----BEGIN X509 CRL-----" in data:
        return parse_crls(data, str(path))
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise KeyringError(f"CRL {path} is neither a PEM nor a DER X.509 CRL") from None


def unusable_anchors(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> list[str]:
    reasons = []
    for cert in certs:
        try:
            check_certificate(cert, "keyring CA")
        except UntrustedSigner as err:
            reasons.append(str(err))
    return reasons


def load_keyring(path: str | Path, *, version: int | None = None) -> Keyring:
    """Load every certificate of a PEM file as a trust anchor, its CRL blocks and the
    ``*.crl`` files beside it (the keyring directory)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise KeyringError(f"cannot read keyring {path}: {err.strerror}") from None
    extra: list[x509.CertificateRevocationList] = []
    try:
        crl_files = sorted(p.parent.glob("*.crl"))
    except OSError:
        crl_files = []
    for crl in crl_files:
        extra += load_crl_file(crl)
    return Keyring.from_pem(data, source=str(path), version=version, extra_crls=tuple(extra))
