"""Trust anchors: the CA certificates a gateway accepts bundle signers from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ferry.packaging.errors import KeyringError


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
        return cls(anchors=tuple(certs), source=source)


def load_keyring(path: str | Path) -> Keyring:
    """Load every certificate of a PEM file as a trust anchor."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise KeyringError(f"cannot read keyring {path}: {err.strerror}") from None
    return Keyring.from_pem(data, source=str(path))
