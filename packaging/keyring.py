"""Trust anchors: the CA certificates a gateway accepts bundle signers from.

An anchor must itself pass ``certpolicy`` (no SHA-1/MD5 signature, no critical extension
ferry does not process). A keyring in which no anchor passes is refused when it is loaded,
so a gateway cannot start with a trust store that could never verify a bundle; a keyring
with some failing anchors loads, and a path that ends at one of them is refused with the
anchor's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ferry.packaging.certpolicy import check_certificate
from ferry.packaging.errors import KeyringError, UntrustedSigner


@dataclass(frozen=True)
class Keyring:
    anchors: tuple[x509.Certificate, ...]
    source: str = "<memory>"

    @classmethod
    def from_pem(cls, data: bytes, source: str = "<memory>") -> Keyring:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise KeyringError(
                f"keyring {source} holds no PEM certificate; give the CA certificate(s) "
                "that sign bundles"
            ) from None
        problems = unusable_anchors(certs)
        if len(problems) == len(certs):
            raise KeyringError(f"keyring {source} has no usable CA certificate: {problems[0]}")
        return cls(anchors=tuple(certs), source=source)

    def problems(self) -> list[str]:
        """Why each unusable anchor is refused (for diagnostics; empty when all pass)."""
        return unusable_anchors(self.anchors)


def unusable_anchors(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> list[str]:
    reasons = []
    for cert in certs:
        try:
            check_certificate(cert, "keyring CA")
        except UntrustedSigner as err:
            reasons.append(str(err))
    return reasons


def load_keyring(path: str | Path) -> Keyring:
    """Load every certificate of a PEM file as a trust anchor."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise KeyringError(f"cannot read keyring {path}: {err.strerror}") from None
    return Keyring.from_pem(data, source=str(path))
