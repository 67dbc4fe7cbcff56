"""Revocation: X.509 CRLs from the keyring, checked on every link of a signing path.

The keyring (packaging/keyring.py) carries the CRLs: blocks in its PEM and, for the
factory keyring, ``*.crl`` files in its directory; a rotated keyring brings its own, so a
bundle carrying a new keyring is also how a revocation reaches the fleet. For every
certificate below an issuer on the path (the signer and each intermediate), each CRL
*issued by that issuer* (issuer name equal, signature valid under the issuer's key) is
consulted; the certificate's serial on it refuses the bundle, with the certificate's
subject and serial in the message so the operator knows which key was cut off.

Decisions, and why:

- a CRL that names the issuer but whose signature does not verify under the issuer's key
  refuses the bundle: the keyring is trusted content, so such a CRL is a build mistake or
  tampering, and treating it as absent could let a revoked signer through;
- an expired CRL (``nextUpdate`` in the past) still revokes, with a warning in the log: a
  revocation never lapses, and refusing every bundle under a stale CRL would freeze the
  fleet, including the very bundle that would bring it a fresh one. Gateways often have
  no reliable clock before their first update either;
- anchors are not revoked by CRL: an anchor leaves the trust store by rotation.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from ferry.packaging.certpolicy import describe
from ferry.packaging.errors import UntrustedSigner

log = logging.getLogger("ferry.packaging.revocation")


class RevokedSigner(UntrustedSigner):
    """A certificate on the signing path is listed on its issuer's CRL."""


class BadCrl(UntrustedSigner):
    """A CRL in the keyring names an issuer on the path but its signature does not verify."""


def serial_text(serial: int) -> str:
    """Serial as OpenSSL prints it (hex, upper case), so it can be grepped in a CA's index."""
    return f"{serial:X}"


def crls_by(
    issuer: x509.Certificate, crls: Sequence[x509.CertificateRevocationList]
) -> list[x509.CertificateRevocationList]:
    """The CRLs that ``issuer`` signed (by name, then by signature: a bad one raises)."""
    out = []
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        try:
            ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        except (UnsupportedAlgorithm, TypeError, ValueError):
            ok = False
        if not ok:
            raise BadCrl(
                f"a CRL in the keyring names issuer {describe(issuer)} but its signature does "
                "not verify under that issuer's key; fix the keyring's CRLs"
            )
        out.append(crl)
    return out


def check_not_revoked(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    now: dt.datetime,
    role: str,
) -> None:
    """Raise RevokedSigner if ``issuer``'s CRL lists ``cert``; warn about a stale CRL."""
    for crl in crls_by(issuer, crls):
        nxt = crl.next_update_utc
        if nxt is not None and nxt < now:
            log.warning(
                "CRL of %s expired on %s (nextUpdate); its revocations still apply: ship a "
                "fresh one in the next keyring", describe(issuer), f"{nxt:%Y-%m-%d}")
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise RevokedSigner(
                f"{role} certificate {describe(cert)} serial {serial_text(cert.serial_number)} "
                f"is revoked by the CRL of {describe(issuer)} (since "
                f"{entry.revocation_date_utc:%Y-%m-%d}); sign with one that is not revoked"
            )


def unverifiable_crls(
    anchors: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList]
) -> list[str]:
    """Reasons for each CRL issued by one of ``anchors`` whose signature fails: checked
    when a keyring is built or offered, so a bad one never ships."""
    reasons = []
    for anchor in anchors:
        try:
            crls_by(anchor, crls)
        except BadCrl as err:
            reasons.append(str(err))
    return reasons
