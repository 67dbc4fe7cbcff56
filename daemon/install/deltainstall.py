"""The write step for a delta rootfs: the pipeline's ``_write_rootfs`` with the image
assembled from the active slot and ranged fetches instead of the bundle stream.

The slot writer, the slot record and their order are the same as for a full install
(docs/install.md, step 3): the record is dropped before the slot is opened, the slot
writer checks the signed ``decompressed-sha256`` over every byte it wrote and fsyncs,
and only then is the record written. A delta rootfs always has that hash (the writer
puts it there), and the install refuses one without it rather than trust chunks alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, cast

from ferry.daemon.config import Config
from ferry.daemon.install import deltacache
from ferry.daemon.install.delta import DeltaError, delta_stream, finish_stats
from ferry.daemon.install.deltahead import DeltaHead
from ferry.daemon.install.download import DownloadOptions
from ferry.daemon.install.slotwriter import SlotHashMismatch, WriteResult, write_slot
from ferry.errors import FerryError
from ferry.packaging.chunkindex import parse_index
from ferry.packaging.description import ImageEntry


def write_rootfs_delta(cfg: Config, *, slot_name: str, slot_device: Path, active: Path,
                       entry: ImageEntry, index_bytes: bytes, head: DeltaHead,
                       options: DownloadOptions | None, version: str,
                       progress: Any) -> tuple[int, dict[str, Any]]:
    """Write the delta rootfs; returns (bytes written, what it cost, for the journal)."""
    from ferry.daemon.boot.slotrecord import begin_write, record_failed, record_verified

    if entry.decompressed_sha256 is None or entry.decompressed_size is None:
        raise DeltaError(f"delta rootfs {entry.filename!r} has no decompressed-sha256 and "
                         "-size in sw-description; rebuild it with ferry bundle create --delta")
    if getattr(entry, "encrypted", False):
        raise DeltaError(f"delta rootfs {entry.filename!r} is encrypted; ferry cannot fetch "
                         "encrypted chunks one by one")
    index = parse_index(index_bytes, what=f"chunk index of {entry.filename!r}",
                        stored_size=entry.size, image_size=entry.decompressed_size)
    have = None
    if head.base_name is not None:
        have = deltacache.load(cfg, head.base_name, head.base_sha256, index)
    deltacache.drop(cfg, slot_name)  # the slot is about to change
    image, stats, fetcher = delta_stream(
        index, url=head.url, options=options, validator=head.validator,
        data_start=head.data_start, active=active, active_limit=head.base_size,
        have=have, slot=slot_device)
    stats.notes.append("active slot index kept" if have is not None else "active slot read")
    try:
        res = write_slot(cast(BinaryIO, image), slot_device, compressed=None,
                         expected_size=entry.decompressed_size,
                         expected_sha256=entry.decompressed_sha256, progress=progress,
                         before_open=lambda: begin_write(cfg, slot_name))
    except SlotHashMismatch:
        record_failed(cfg, slot_name, "failed its hash")
        raise
    except FerryError as err:
        record_failed(cfg, slot_name, f"failed: {str(err)[:200]}")
        raise
    finally:
        image.close()
        fetcher.close()
    record_verified(cfg, slot_name, sha256=entry.decompressed_sha256, size=res.size,
                    version=version)
    deltacache.save(cfg, slot_name, entry.decompressed_sha256, index_bytes)
    return res.size, finish_stats(stats, fetcher)


def write_delta_step(ctx: Any, dep_id: int, *, slot: Any, booted: Any, entry: ImageEntry,
                     stream: Any, reader: Any, head: DeltaHead,
                     options: DownloadOptions | None, version: str,
                     progress: Any) -> WriteResult:
    """The pipeline's write step for a delta rootfs (``slot``/``booted``: SlotInfo)."""
    if reader.delta_index is None or entry.delta is None or entry.size != head.member_size:
        raise DeltaError(f"bundle at {head.url} changed while it was read (its rootfs is no "
                         "longer the delta member first seen); install it again")
    size, cost = write_rootfs_delta(
        ctx.config, slot_name=slot.name, slot_device=slot.device,
        active=head.base or booted.device,
        entry=entry, index_bytes=reader.delta_index, head=head, options=options,
        version=version, progress=progress)
    # the reader's view of the member: absent bytes, nothing to read, checks its end
    while stream.read(1 << 16):
        pass
    ctx.journal.set_info(dep_id, delta=cost)
    return WriteResult(size=size, sha256=entry.decompressed_sha256)
