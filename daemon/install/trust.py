"""The keyring in force on this gateway: the factory one, or the newest rotation.

Where the keys live:

- the factory keyring is ``[keyring] path`` on the read-only rootfs (with any ``*.crl``
  beside it); it states its version in a ``ferry-keyring-version: N`` line (none: 0);
- a rotated keyring lives on the data partition, ``<data_dir>/keyring/keyring-<N>.json``:
  the whole chain of accepted rotations, each with the sw-description and signature that
  carried it (packaging/keyringupdate.py);
- the U-Boot env variable ``ferry_keyring`` holds ``<N> <sha256 of that file>``.

The keyring in force is the factory one when no rotation is recorded or the factory
keyring's version is at least N (a rootfs that ships a newer keyring); otherwise the
file named by the env, whose digest must match and whose chain must replay from the
factory keyring. Anything else (file missing, altered, chain broken) refuses every
bundle with a one-line reason: falling back to the factory keyring would give back
trust in the very CA the rotation took away.

Why this holds against someone who can write the data partition but has no signing
key: a replaced file fails the digest in the env, and so does an older, genuine chain
(rollback); they can only delete it, which refuses updates but trusts nothing new. The
chain replay is the second wall, for someone who can also write the env: a keyring
enters only with a signature under the keyring before it.

Installing a rotation, a power cut at any instant leaves exactly one keyring in force:
the new file is written to a temp name, fsynced, renamed to its own name (the file in
force is never touched) and the directory fsynced; then one env write (redundant env,
atomic) switches ``ferry_keyring`` to it; only then are older files removed. Before the
env write the old keyring is in force, after it the new one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ferry.daemon.config import Config
from ferry.daemon.testhooks.killpoint import killpoint
from ferry.errors import FerryError
from ferry.packaging.description import Description
from ferry.packaging.errors import KeyringError
from ferry.packaging.keyring import Keyring, load_keyring
from ferry.packaging.keyringupdate import (
    MAX_STORE_SIZE,
    Link,
    accept,
    check_offer,
    decode_store,
    encode_store,
    replay,
)
from ferry.packaging.signature import SignerInfo

log = logging.getLogger(__name__)

ENV_VAR = "ferry_keyring"


class Env(Protocol):
    """What trust needs of the U-Boot env (boot.ubootenv.EnvStore)."""

    def read(self) -> dict[str, str]: ...

    def update(self, changes: Mapping[str, str | None]) -> dict[str, str]: ...


@dataclass
class TrustState:
    factory: Keyring
    # (keyring, link that brought it) from the factory keyring to the one in force
    chain: list[tuple[Keyring, Link | None]]
    path: Path | None = None  # the rotated keyring file in force
    chosen: Keyring | None = field(default=None, repr=False)  # set by keyring_for

    @property
    def in_force(self) -> Keyring:
        return self.chain[-1][0]

    def keyring_for(self, raw_description: bytes) -> Keyring:
        """The keyring a bundle is verified against: the one in force, except for the
        bundle that brought it (the same sw-description bytes), which was accepted under
        the keyring before: after a power cut its install is re-run from the start."""
        keyring = self.in_force
        link = self.chain[-1][1]
        if link is not None and len(self.chain) > 1 and (
                hashlib.sha256(raw_description).hexdigest() == link.description_sha256):
            keyring = self.chain[-2][0]
        self.chosen = keyring
        return keyring

    def links_upto(self, keyring: Keyring) -> list[Link]:
        out = []
        for kr, link in self.chain:
            if link is not None:
                out.append(link)
            if kr is keyring:
                return out
        raise KeyringError("keyring is not on this gateway's chain")


def store_dir(config: Config) -> Path:
    return Path(config.gateway.data_dir) / "keyring"


def store_name(version: int) -> str:
    return f"keyring-{version}.json"


def parse_env(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
        raise KeyringError(
            f"U-Boot env {ENV_VAR}={value[:80]!r} is not '<version> <sha256>'; "
            f"reprovision the keyring or remove {ENV_VAR} to fall back to the factory one")
    return int(parts[0]), parts[1].lower()


def load_trust(config: Config, env: Env) -> TrustState:
    """The keyring in force (see the module docstring); KeyringError if it cannot be
    established, which refuses every bundle."""
    factory = load_keyring(config.keyring.path)
    recorded = parse_env(env.read().get(ENV_VAR))
    if recorded is None:
        return TrustState(factory=factory, chain=[(factory, None)])
    version, digest = recorded
    path = store_dir(config) / store_name(version)
    if factory.version >= version:
        return TrustState(factory=factory, chain=[(factory, None)])
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_STORE_SIZE + 1)
    except OSError as err:
        raise KeyringError(
            f"keyring version {version} recorded in the U-Boot env ({ENV_VAR}) but "
            f"{path} cannot be read ({err.strerror}); every bundle is refused until the "
            "keyring is reprovisioned") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise KeyringError(
            f"{path} does not match the digest recorded in the U-Boot env ({ENV_VAR}); "
            "the data partition was altered: every bundle is refused until the keyring "
            "is reprovisioned")
    chain = replay(factory, decode_store(data, str(path)))
    if chain[-1][0].version != version:
        raise KeyringError(
            f"{path} replays to keyring version {chain[-1][0].version}, not {version}")
    return TrustState(factory=factory, chain=chain, path=path)


def check(state: TrustState, desc: Description, signer: SignerInfo) -> None:
    """Refuse a bundle whose keyring would not move the version forward or lacks the
    keyring's k of n anchor signatures (against the keyring it was verified with, so the
    re-run of an accepted rotation passes)."""
    check_offer(state.chosen or state.in_force, desc, signer.anchors)


def install(config: Config, env: Env, state: TrustState, desc: Description,
            raw_description: bytes, signature: bytes, data: bytes) -> Path:
    """Make the bundle's keyring the one in force (the bundle verified against
    ``state.chosen`` and every member was read and checked). Idempotent."""
    verified_against = state.chosen or state.in_force
    link = accept(desc, raw_description, signature, data)
    links = [*state.links_upto(verified_against), link]
    blob = encode_store(links)
    replay(state.factory, links)  # what the next start will do: fail now, not then
    d = store_dir(config)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = d / store_name(link.version)
    tmp = d / (store_name(link.version) + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob[: len(blob) // 2])
        killpoint("keyring.write")
        fh.write(blob[len(blob) // 2:])
        fh.flush()
        os.fsync(fh.fileno())
    killpoint("keyring.rename")
    os.replace(tmp, final)
    _fsync_dir(d)
    killpoint("keyring.env")
    env.update({ENV_VAR: f"{link.version} {hashlib.sha256(blob).hexdigest()}"})
    killpoint("keyring.clean")
    clean(config, keep=final)
    log.info("keyring version %d is in force from the next bundle on", link.version)
    return final


def clean(config: Config, keep: Path | None) -> None:
    """Remove keyring files other than ``keep`` (older rotations, ``.part`` leftovers)."""
    d = store_dir(config)
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p != keep and p.name.startswith("keyring-"):
            p.unlink(missing_ok=True)
    _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def status(config: Config, env: Env) -> dict[str, Any]:
    """The ``keyring`` section of ``ferry status``."""
    try:
        state = load_trust(config, env)
    except FerryError as err:  # status shows the reason, never a traceback
        return {"version": None, "source": "", "error": " ".join(str(err).split())[:300]}
    kr = state.in_force
    return {
        "version": kr.version,
        "source": "factory" if state.path is None else "rotated",
        "path": str(state.path or config.keyring.path),
        "anchors": [a.subject.rfc4514_string() for a in kr.anchors],
        "crls": len(kr.crls),
        "error": None,
    }
