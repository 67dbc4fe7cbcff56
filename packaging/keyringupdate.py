"""Keyring rotation: a bundle carries a new keyring, the gateway keeps a signed chain.

A bundle offers a new keyring as a member named and hashed in its signed sw-description
(``software.ferry.keyring``, with a version). The gateway accepts it only when the
bundle verified against the keyring in force and the version is higher than that
keyring's: versions never go backwards, an equal or lower one refuses the bundle.

What the gateway keeps (ferry.daemon.install.trust decides where) is a *chain*: for
every accepted rotation, the keyring PEM together with the sw-description and signature
that carried it. Replaying the chain from the factory keyring re-verifies each link
against the keyring before it (``historical``: the signature and path must hold; the
validity periods and CRLs were checked on the day it was accepted), so a keyring file
that no bundle under the factory trust ever vouched for is refused, whoever could write
the data partition. Rolling the chain back to an earlier, genuine one is what the
U-Boot env binding stops (see docs/security.md, "Trust rotation and revocation").

Links at or below the factory keyring's version are skipped in the replay: a rootfs
that ships a newer factory keyring needs none of the older rotations.

k of n: a keyring that states ``ferry-keyring-threshold: k`` accepts a keyring change
only from a signature whose SignerInfos chain to k different anchors of it (TUF's rule
for root metadata, with the keyring's anchors as the root keys). One leaked signer key
can then still sign a rootfs, but no longer hand the fleet's trust to its owner. The
rule holds at acceptance and again at every replay of the chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ferry.packaging.description import MAX_KEYRING_SIZE, Description, ImageEntry, parse_description
from ferry.packaging.errors import BundleCreateError, BundleError, KeyringError
from ferry.packaging.keyring import Keyring, stated_version
from ferry.packaging.revocation import unverifiable_crls
from ferry.packaging.signature import verify

STORE_FORMAT = 1
MAX_STORE_SIZE = 16 << 20


class KeyringRollback(BundleError):
    """A bundle offers a keyring whose version is not above the one in force."""


class KeyringQuorum(BundleError):
    """A bundle offers a keyring with signatures from fewer anchors than k of n asks."""


def signed_anchors(current: Keyring, anchors: Sequence[x509.Certificate]) -> int:
    """How many different anchors of ``current`` the signature's SignerInfos reached."""
    mine = {a.fingerprint(hashes.SHA256()) for a in current.anchors}
    return len({a.fingerprint(hashes.SHA256()) for a in anchors} & mine)


@dataclass(frozen=True)
class Link:
    """One accepted rotation: the new keyring and the signed statement that carried it."""

    version: int
    keyring: bytes  # the PEM member, byte for byte
    description: bytes  # the sw-description that names and hashes it
    signature: bytes  # sw-description.sig

    @property
    def description_sha256(self) -> str:
        return hashlib.sha256(self.description).hexdigest()


def check_keyring_bytes(data: bytes, version: int, source: str) -> Keyring:
    """A keyring offered at ``version``: usable anchors, a stated version (if any) that
    agrees, and every CRL issued by one of its anchors correctly signed."""
    if len(data) > MAX_KEYRING_SIZE:
        raise KeyringError(f"keyring {source} is over {MAX_KEYRING_SIZE} bytes")
    stated = stated_version(data)
    if stated and stated != version:
        raise KeyringError(
            f"keyring {source} states ferry-keyring-version {stated}, not {version}")
    keyring = Keyring.from_pem(data, source=source, version=version)
    bad = unverifiable_crls(keyring.anchors, keyring.crls)
    if bad:
        raise KeyringError(f"keyring {source}: {bad[0]}")
    return keyring


def keyring_member(path: Path, version: int) -> tuple[ImageEntry, bytes]:
    """The member ``ferry bundle create --keyring PATH --keyring-version N`` adds."""
    if not 1 <= version <= 2**31 - 1:
        raise BundleCreateError(f"--keyring-version {version}: give an integer 1..2^31-1")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEYRING_SIZE + 1)
    except OSError as err:
        raise BundleCreateError(f"cannot read keyring {path}: {err.strerror}") from None
    try:
        check_keyring_bytes(data, version, str(path))
    except KeyringError as err:
        raise BundleCreateError(str(err)) from None
    entry = ImageEntry(filename=f"ferry-keyring-v{version}.pem", size=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), compressed=None,
                       role="keyring")
    return entry, data


def check_offer(current: Keyring, desc: Description,
                anchors: Sequence[x509.Certificate] = ()) -> None:
    """Refuse a bundle whose keyring would not move the version forward, or that lacks
    the signatures of ``current.threshold`` anchors (``anchors``: what it was signed
    under, SignerInfo.anchors)."""
    offered = desc.keyring_version
    if offered is None:
        return
    if offered <= current.version:
        raise KeyringRollback(
            f"bundle carries keyring version {offered} but version {current.version} is in "
            f"force; keyring versions never go backwards (build it with --keyring-version "
            f"above {current.version}, or without --keyring)")
    have = signed_anchors(current, anchors)
    if have < current.threshold:
        raise KeyringQuorum(
            f"bundle carries keyring version {offered} signed under {have} of the "
            f"{len(current.anchors)} anchors of keyring version {current.version}, which "
            f"takes {current.threshold} for a keyring change; add signatures under other "
            "anchors with 'ferry bundle cosign'")


def accept(desc: Description, raw_description: bytes, signature: bytes, data: bytes) -> Link:
    """The link for a verified bundle's keyring member (its bytes, read to the end)."""
    entry = desc.keyring()
    assert entry is not None and desc.keyring_version is not None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise KeyringError("keyring member does not match its sw-description entry")
    check_keyring_bytes(data, desc.keyring_version, entry.filename)
    return Link(version=desc.keyring_version, keyring=data, description=raw_description,
                signature=signature)


def replay(factory: Keyring, links: list[Link]) -> list[tuple[Keyring, Link | None]]:
    """The keyrings in force one after the other, from ``factory``; each link verified
    against the one before it. Raises KeyringError naming the link that fails."""
    chain: list[tuple[Keyring, Link | None]] = [(factory, None)]
    for link in links:
        current = chain[-1][0]
        if link.version <= current.version:
            continue
        where = f"rotated keyring version {link.version}"
        try:
            info = verify(link.description, link.signature, current, historical=True)
            desc = parse_description(link.description)
        except BundleError as err:
            raise KeyringError(
                f"{where} was not signed under keyring version {current.version}: {err}"
            ) from None
        if signed_anchors(current, info.anchors) < current.threshold:
            raise KeyringError(
                f"{where} lacks the {current.threshold} anchor signatures keyring version "
                f"{current.version} takes")
        entry = desc.keyring()
        if (entry is None or desc.keyring_version != link.version
                or hashlib.sha256(link.keyring).hexdigest() != entry.sha256):
            raise KeyringError(f"{where} is not the keyring its signed sw-description names")
        chain.append((check_keyring_bytes(link.keyring, link.version, where), link))
    return chain


def encode_store(links: list[Link]) -> bytes:
    doc = {"ferry-keyring-store": STORE_FORMAT, "links": [
        {"version": link.version,
         "keyring": base64.b64encode(link.keyring).decode(),
         "description": base64.b64encode(link.description).decode(),
         "signature": base64.b64encode(link.signature).decode()} for link in links]}
    return json.dumps(doc, indent=1).encode() + b"\n"


def decode_store(data: bytes, source: str) -> list[Link]:
    try:
        doc = json.loads(data)
        if doc.get("ferry-keyring-store") != STORE_FORMAT:
            raise ValueError("unknown format")
        return [Link(version=int(d["version"]),
                     keyring=base64.b64decode(d["keyring"], validate=True),
                     description=base64.b64decode(d["description"], validate=True),
                     signature=base64.b64decode(d["signature"], validate=True))
                for d in doc["links"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise KeyringError(f"keyring store {source} is not a ferry keyring store") from None
