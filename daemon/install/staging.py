"""Target firmware waits on the data partition until the gateway itself is committed.

A staged file appears under its final name only once all of it is on disk and its
hash is known (write to ``.part``, fsync, rename, fsync the directory), so after a
power cut a staged name is always a whole image; a ``.part`` is garbage to delete.
The proxy phase re-hashes a staged file before flashing it, since it may sit there
across reboots.

A signed bundle still cannot reach past its images here (docs/security.md):

- names: the staged name is the member name made safe for a file system *plus* a digest
  of the exact name, so two members whose names sanitise alike ("fw v1.bin",
  "fw_v1.bin", or a shared 100-character prefix) never land on one file. The signed
  names are unique (sw-description refuses a name listed twice), so this keeps every
  legitimate bundle installable, where refusing such a bundle would punish the signer
  for our sanitiser; the name is the same on every run, so a resumed install finds it.
- size: an image may decompress to no more than its signed decompressed-size (or
  stored size), else ``[install] max_target_image_size``, and never past the data
  partition's free space less ``[install] staging_reserve``: a zstd/gzip bomb stops
  at the limit, the ``.part`` is removed, and the install fails with one line.
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
from typing import TYPE_CHECKING, BinaryIO

from ferry.daemon.testhooks.killpoint import killpoint
from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.config import InstallConfig
    from ferry.packaging.description import ImageEntry

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
    """``<dep>-<safe name>.<32 hex digits of sha256(name)>``: readable, and distinct for
    distinct member names even when their safe forms are equal; never ends in ``.part``
    (which ``clean`` treats as garbage)."""
    tag = hashlib.sha256(filename.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return staging_dir(data_dir) / f"{deployment_id}-{_safe(filename)}.{tag}"


@dataclass(frozen=True)
class SizeLimit:
    size: int  # most bytes the image may decompress to
    what: str  # names the image and the limit, for the error that stops it


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer could still use on ``path``'s file system (ferry's
    root reserve is the system's, not ours to fill)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def image_limit(data_dir: str | Path, entry: ImageEntry, install: InstallConfig) -> SizeLimit:
    """How many bytes the target image ``entry`` may decompress to on the data partition.

    The image's own signed size first (``decompressed-size``, or the stored size of an
    image that is not compressed): it cannot produce more than it promised. Without one,
    ``install.max_target_image_size``. Never more than the partition's free space less
    ``install.staging_reserve``, which the journal and the next boot need; a declared
    size that does not fit is refused before the first byte is written.
    """
    d = staging_dir(data_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        room = max(0, free_bytes(d) - install.staging_reserve)
    except OSError as err:
        raise StagingError(f"cannot use the staging directory {d}: "
                           f"{err.strerror or err}") from None
    declared = entry.decompressed_size if entry.compressed else entry.size
    name = f"target image {entry.filename!r}"
    if declared is not None:
        if declared > room:
            raise StagingError(
                f"{name} needs {declared} bytes but the data partition has {room} free "
                f"above [install] staging_reserve ({install.staging_reserve}); free space "
                "or build a smaller image")
        return SizeLimit(declared, f"{name} (signed size {declared})")
    cap = install.max_target_image_size
    if cap <= room:
        return SizeLimit(cap, f"{name} (no signed decompressed-size; "
                         "[install] max_target_image_size)")
    return SizeLimit(room, f"{name} (no signed decompressed-size; free space on the data "
                     "partition above [install] staging_reserve)")


def stage(
    src: BinaryIO,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> StagedImage:
    """Copy ``src`` (already decompressed) to ``dest`` atomically; return its hash.

    ``dest`` must not exist: staging starts from an empty directory (``clean``), so an
    existing file means two images were given one name, and the second is refused
    rather than allowed to replace the first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise StagingError(f"staged file {dest.name} already exists; two images of the "
                           "bundle map to one staged name, refusing the second")
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
