"""``ferry-delta`` in a rootfs entry of sw-description: the signed link to the chunk index.

The index member is bound exactly like an image (sha256 and size of its stored bytes in
the signed description), so it is as trustworthy as the rootfs entry itself, and the
chunk hashes it holds are what every fetched or reused chunk is checked against. Only a
zstd rootfs can carry one: the chunk store is a run of zstd frames, which is also what
lets a gateway without the base install the same member as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ferry.packaging.cpio import check_name
from ferry.packaging.errors import BadDescription, BundleError, shown

KEY = "ferry-delta"
MAX_INDEX_SIZE = 64 << 20  # read into memory on the gateway: 40 bytes a chunk, compressed
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class DeltaRef:
    index: str  # member name of the chunk index; it comes right before the rootfs member
    sha256: str  # of the index member's stored bytes
    size: int


def parse_delta(entry: dict[str, Any], where: str, *, role: str,
                compressed: str | None) -> DeltaRef | None:
    value = entry.get(KEY)
    if value is None:
        return None
    where = f"{where}.{KEY}"
    if role != "rootfs":
        raise BadDescription(f"sw-description: {where}: only the rootfs image can be a delta")
    if compressed != "zstd":
        raise BadDescription(f"sw-description: {where}: a delta rootfs must be compressed "
                             "= \"zstd\" (one frame per chunk)")
    if not isinstance(value, dict):
        raise BadDescription(f"sw-description: {where} must be a group {{ ... }}")
    index = value.get("index")
    if not isinstance(index, str):
        raise BadDescription(f"sw-description: {where}.index must be a member name")
    try:
        check_name(index)
    except BundleError as err:
        raise BadDescription(f"sw-description: {where}.index: {err}") from None
    sha = value.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise BadDescription(f"sw-description: {where}.sha256 is not 64 hex digits")
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_INDEX_SIZE:
        raise BadDescription(
            f"sw-description: {where}.size = {shown(size)}; must be 1..{MAX_INDEX_SIZE}")
    return DeltaRef(index=index, sha256=sha.lower(), size=size)


def delta_doc(ref: DeltaRef) -> dict[str, Any]:
    return {"index": ref.index, "sha256": ref.sha256, "size": ref.size}
