"""Target firmware waits on the data partition until the gateway itself is committed.

A staged file appears under its final name only once all of it is on disk and its
hash is known (write to ``.part``, fsync, rename, fsync the directory), so after a
power cut a staged name is always a whole image; a ``.part`` is garbage to delete.
The proxy phase re-hashes a staged file before flashing it, since it may sit there
across reboots.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ferry.daemon.testhooks.killpoint import killpoint
from ferry.errors import FerryError

CHUNK = 1 << 20


class StagingError(FerryError):
    pass


@dataclass(frozen=True)
class StagedImage:
    path: str
    size: int
    sha256: str  # of the staged (decompressed) bytes


def staging_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "staging"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "image"


def staged_path(data_dir: str | Path, deployment_id: int, filename: str) -> Path:
    return staging_dir(data_dir) / f"{deployment_id}-{_safe(filename)}"


def stage(
    src: BinaryIO,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> StagedImage:
    """Copy ``src`` (already decompressed) to ``dest`` atomically; return its hash."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    total = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        with open(part, "wb", buffering=0) as out:
            while True:
                n = src.readinto(view) if hasattr(src, "readinto") else _read(src, view)
                if not n:
                    break
                h.update(view[:n])
                out.write(view[:n])
                total += n
                killpoint("staging.write")
                if progress is not None:
                    progress(total)
            os.fsync(out.fileno())
    except OSError as exc:
        part.unlink(missing_ok=True)
        what = {errno.ENOSPC: "no space left on the data partition",
                errno.EFBIG: "file size limit reached"}.get(exc.errno or 0, str(exc))
        raise StagingError(f"staging {dest.name} failed: {what}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if expected_sha256 and digest != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise StagingError(
            f"staged {dest.name} has sha256 {digest}, expected {expected_sha256}; "
            "the bundle is corrupt")
    killpoint("staging.rename")
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return StagedImage(path=str(dest), size=total, sha256=digest)


def _read(src: BinaryIO, view: memoryview) -> int:
    data = src.read(len(view))
    view[: len(data)] = data
    return len(data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_staged(image: StagedImage) -> None:
    """Re-hash a staged file before it is flashed; it may have sat there across boots."""
    h = hashlib.sha256()
    try:
        with open(image.path, "rb", buffering=0) as f:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := f.readinto(view):
                h.update(view[:n])
    except FileNotFoundError:
        raise StagingError(f"staged image {image.path} is gone; install the bundle again") \
            from None
    if h.hexdigest() != image.sha256:
        raise StagingError(f"staged image {image.path} is corrupt (sha256 mismatch); "
                           "install the bundle again")


def clean(data_dir: str | Path, keep_deployment: int | None = None) -> None:
    """Remove staged files of other deployments and any ``.part`` leftovers."""
    d = staging_dir(data_dir)
    if not d.is_dir():
        return
    for p in d.iterdir():
        dep = p.name.split("-", 1)[0]
        if p.name.endswith(".part") or dep != str(keep_deployment):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
