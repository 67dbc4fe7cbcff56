"""Typed rejections of a bundle.

Each class is one reason a bundle is refused, so callers (the install pipeline, the
journal, the backend feedback) can tell a tampered download from a truncated one without
parsing messages. Messages are one line, say what is wrong and, where it helps, what to do.
"""

from __future__ import annotations

from ferry.errors import FerryError


class BundleError(FerryError):
    """A bundle (or its keyring) cannot be used."""


class UnsignedBundle(BundleError):
    """The second member is not ``sw-description.sig``: nothing vouches for the bundle."""


class BadSignature(BundleError):
    """The CMS signature does not match ``sw-description`` or is malformed."""


class UntrustedSigner(BundleError):
    """The signer's certificate does not chain to the keyring (or may not sign)."""


class WeakCertificate(UntrustedSigner):
    """A certificate on the signing path is signed with SHA-1, MD5 or an unknown digest."""


class UnknownCriticalExtension(UntrustedSigner):
    """A certificate on the signing path has a critical extension ferry does not process."""


class ExpiredSigner(BundleError):
    """A certificate in the signer's chain is outside its validity period."""


class WrongMemberOrder(BundleError):
    """Members are not in the order sw-description, sw-description.sig, images as listed."""


class UnlistedMember(BundleError):
    """A member that sw-description does not list."""


class MissingMember(BundleError):
    """sw-description lists an image that the archive does not carry."""


class SizeMismatch(BundleError):
    """An image's size differs from the size recorded in sw-description."""


class HashMismatch(BundleError):
    """An image's sha256 differs from the hash recorded in sw-description."""


class TruncatedBundle(BundleError):
    """The stream ended before the archive did."""


class BadHeader(BundleError):
    """A cpio header (or its checksum) is not valid newc/crc."""


class BadMemberName(BundleError):
    """A member name that could escape a directory or is otherwise unusable."""


class OverLimit(BundleError):
    """A member, the description or the bundle exceeds a configured limit."""


class TrailingJunk(BundleError):
    """Bytes after the cpio trailer other than zero padding."""


class BadDescription(BundleError):
    """sw-description is not valid libconfig or lacks what ferry needs."""


class KeyringError(BundleError):
    """The keyring file cannot be read or holds no usable CA certificate."""


class BundleCreateError(BundleError):
    """``ferry bundle create`` cannot build the bundle from its inputs."""


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a message about untrusted input:
    repr keeps it on one line, the cut keeps a hostile 64 KiB name from flooding a log."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
