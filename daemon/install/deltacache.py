"""The chunk index of each slot that a delta install wrote, kept for the next delta.

After a delta install the new slot holds exactly the image that the bundle's verified
index describes, so that index is also the slot's own: kept on the data partition, it
spares the next delta install from reading and cutting the whole active slot (seconds
of CPU on a gateway). It is only a hint. It is used only while the slot's verified
record has the same image sha256 it was saved with, and every chunk copied by its
offsets is hashed again before use (daemon/install/delta.py), so a stale or damaged
cache costs a fetch, never a wrong byte.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ferry.daemon.config import Config
from ferry.packaging.chunkindex import ChunkIndex, parse_index
from ferry.packaging.errors import BundleError

log = logging.getLogger(__name__)


def _path(config: Config, slot: str) -> Path:
    return Path(config.gateway.data_dir) / "delta" / f"{slot}.cidx"


def drop(config: Config, slot: str) -> None:
    _path(config, slot).unlink(missing_ok=True)


def save(config: Config, slot: str, image_sha256: str, index: bytes) -> None:
    path = _path(config, slot)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(image_sha256.encode() + b"\n" + index)
        os.replace(tmp, path)
    except OSError as err:  # a hint: the next delta reads the slot instead
        log.warning("cannot keep the chunk index of %s (%s)", slot, err)


def kept_for(config: Config, slot: str, image_sha256: str) -> bool:
    """Whether an index is kept for ``slot`` holding the image ``image_sha256``."""
    try:
        with open(_path(config, slot), "rb") as f:
            return f.readline().rstrip(b"\n").decode(errors="replace") == image_sha256
    except OSError:
        return False


def load(config: Config, slot: str, image_sha256: str | None,
         wanted: ChunkIndex) -> dict[bytes, int] | None:
    """Offsets in ``slot`` of the chunks ``wanted`` needs, from the kept index; None when
    there is none for the image the slot's record names, or it was cut otherwise."""
    if not image_sha256:
        return None
    try:
        data = _path(config, slot).read_bytes()
    except OSError:
        return None
    sha, _, raw = data.partition(b"\n")
    if sha.decode(errors="replace") != image_sha256:
        return None
    try:
        kept = parse_index(raw, what=f"kept chunk index of {slot}")
    except BundleError as err:
        log.warning("%s; reading the slot instead", err)
        return None
    if kept.params != wanted.params:
        return None
    need = {wanted.digest(i) for i in range(wanted.count)}
    found: dict[bytes, int] = {}
    offset = 0
    for i in range(kept.count):
        digest = kept.digest(i)
        if digest in need and digest not in found:
            found[digest] = offset
        offset += kept.lengths[i]
    return found


def keep_after_full(config: Config, slot: str, entry: object, index: bytes) -> None:
    """A delta bundle installed whole (a path, no usable base, the fallback of a
    server without Range): its verified index describes the slot just written too."""
    sha = getattr(entry, "decompressed_sha256", None)
    if sha and not getattr(entry, "encrypted", False):
        save(config, slot, sha, index)
    else:
        drop(config, slot)
