"""The install pipeline: one bundle from a path or URL to "rebooting into the new slot".

Order matters and is the whole safety argument (DESIGN.md, "One deployment"):

1. the deployment is in the journal before anything else happens;
2. sw-description is verified (signature, compatible, version policy, sizes) before any
   payload byte is used, and before the inactive slot is touched;
3. the inactive slot is marked unbootable *before* it is written, so a power cut in
   the middle of the write can never leave a half-written slot that U-Boot would try;
4. the slot gets the image through decompression and sha256, then fsync;
5. target images are staged on the data partition, hash-checked; a new keyring the
   bundle carries is installed once every member has been read and checked (trust.py);
6. one env write makes the new slot the one to try; the journal then says "rebooting".

Every step is recorded before its side effect and is idempotent, so :func:`resume`
after a crash just repeats the interrupted step: a deployment that had not yet
activated the new slot is run again from the start (the slot is scratch until then);
one that was activating repeats the env write; one that was rebooting reboots, or, if
the machine did reboot, goes on to the boot check (ferry.daemon.install.bootcheck).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.daemon.config import Config
from ferry.daemon.install import staging
from ferry.daemon.install.bundlesource import open_source
from ferry.daemon.install.context import Context as Context
from ferry.daemon.install.context import ProgressFn as ProgressFn
from ferry.daemon.install.context import current_boot_id as current_boot_id
from ferry.daemon.install.context import make_context as make_context
from ferry.daemon.install.devicedeploy import DEVICE_ORIGIN
from ferry.daemon.install.slotwriter import (
    SlotTooSmall,
    WriteResult,
    slot_capacity,
    write_slot,
)
from ferry.daemon.journal import Deployment
from ferry.daemon.testhooks.killpoint import killpoint

if TYPE_CHECKING:
    from ferry.daemon.install.download import DownloadOptions
from ferry.daemon.versions import below_floor, parse_version
from ferry.errors import FerryError

log = logging.getLogger(__name__)

PRE_ACTIVATION = ("accepted", "verifying", "invalidating", "writing", "written", "staging",
                  "staged")


class InstallError(FerryError):
    pass


class IncompatibleBundle(InstallError):
    pass


class VersionRefused(InstallError):
    pass


class DeploymentBusy(InstallError):
    pass


@dataclass(frozen=True)
class SlotInfo:
    name: str
    bootname: str
    device: Path


def download_options(config: Config) -> DownloadOptions:
    from ferry.daemon.install.download import DownloadOptions

    b = config.backend
    auth: tuple[str, str] | None = None
    if b.url and b.target_token:
        auth = ("Authorization", f"TargetToken {b.target_token}")
    elif b.url and b.gateway_token:
        auth = ("Authorization", f"GatewayToken {b.gateway_token}")
    return DownloadOptions(
        stall_timeout=config.install.download_stall_timeout,
        retries=config.install.download_retries,
        backoff=min(1.0, config.install.download_stall_timeout / 4),
        ca_file=str(b.ca_file) if b.ca_file else None,
        client_cert=str(b.client_cert) if b.client_cert else None,
        client_key=str(b.client_key) if b.client_key else None,
        # the backend's artifact links want the device's token; only its origin gets it
        auth_header=auth, auth_origin=b.url if auth else None,
    )


def target_slot(ctx: Context) -> tuple[SlotInfo, SlotInfo]:
    """(booted, inactive) slots; the inactive one is what we may overwrite."""
    from ferry.daemon.boot.slots import inactive_slot

    inactive = inactive_slot(ctx.config, ctx.bootloader)
    booted_name = ctx.bootloader.booted()
    booted = ctx.config.slot(booted_name)
    if Path(inactive.device).resolve() == Path(booted.device).resolve():
        raise InstallError(
            f"inactive slot {inactive.name} is the same device as the booted slot "
            f"({booted.device}); fix [[slot]] in the config")
    return (SlotInfo(booted.name, booted.bootname, Path(booted.device)),
            SlotInfo(inactive.name, inactive.bootname, Path(inactive.device)))


def check_policy(config: Config, version: str, compatible: tuple[str, ...], force: bool) -> str:
    """Refuse wrong hardware, downgrades and same version (unless forced) and anything
    under the floor (even forced: the floor exists to stop known-bad old releases)."""
    mine = config.gateway.compatible
    if mine not in compatible:
        raise IncompatibleBundle(
            f"bundle is for {', '.join(compatible) or 'no hardware'}, this gateway is {mine!r}; "
            "use a bundle built for this hardware")
    new = parse_version(version)
    floor = config.install.min_version
    if below_floor(version, floor):
        raise VersionRefused(
            f"bundle version {version} is below the minimum {floor} set in [install]")
    running = config.gateway.running_version()
    if running and not force:
        cur = parse_version(running)
        if new < cur:
            raise VersionRefused(
                f"bundle version {version} is older than the running {running}; "
                "use --force to downgrade")
        if new == cur and not config.install.allow_same_version:
            raise VersionRefused(
                f"version {version} is already running; use --force to install it again")
    return running


def install(config: Config, source: str, *, force: bool = False, origin: str = "cli",
            external_id: str | None = None, progress: ProgressFn | None = None,
            ctx: Context | None = None) -> int:
    """Start a new deployment and run it up to the reboot; returns its id.

    Raises the error that stopped it (the journal already has it recorded).
    """
    ctx = ctx or make_context(config, progress=progress)
    pending = ctx.journal.pending()
    if pending is not None:
        if pending.state in PRE_ACTIVATION:
            # an install that was cut off before activating: its slot is scratch, and
            # the new request supersedes it.
            ctx.journal.finish(pending.id, "cancelled",
                               "interrupted before activation; superseded by a new install")
        else:
            raise DeploymentBusy(
                f"deployment {pending.id} ({pending.version or pending.source}) is "
                f"{pending.state}; wait for it to finish or run 'ferry install --resume'")
    dep_id = ctx.journal.create(source, origin=origin, force=force, external_id=external_id)
    run(ctx, dep_id)
    return dep_id


def resume(ctx: Context) -> Deployment | None:
    """Continue whatever deployment a crash or a reboot interrupted; None if none."""
    dep = ctx.journal.pending()
    if dep is None:
        return None
    run(ctx, dep.id)
    return ctx.journal.get(dep.id)


def run(ctx: Context, dep_id: int) -> None:
    """Drive deployment ``dep_id`` from its recorded state as far as this boot allows."""
    from ferry.daemon.install.bootcheck import after_boot

    dep = ctx.journal.get(dep_id)
    if dep.origin == DEVICE_ORIGIN:  # one device's target-only bundle: no slot, no reboot
        from ferry.daemon.install.devicedeploy import run as device_run

        device_run(ctx, dep_id)
        return
    if dep.state in PRE_ACTIVATION:
        _guarded(ctx, dep_id, _prepare_or_restart)
        dep = ctx.journal.get(dep_id)
        if dep.result is not None:
            return
    if dep.state == "activating":
        _guarded(ctx, dep_id, _activate)
        dep = ctx.journal.get(dep_id)
    if dep.state == "rebooting":
        boot_id = ctx.boot_id() if ctx.boot_id else ""
        if dep.boot_id and boot_id and dep.boot_id != boot_id:
            after_boot(ctx, dep_id)
        else:
            try:
                _reboot(ctx, dep_id)
            except FerryError as err:
                # The new slot is already activated: the deployment stays pending so
                # the boot check runs after whatever reboot comes next.
                ctx.journal.end_step(dep_id, "reboot", "failed", str(err))
                ctx.journal.update(dep_id, error=f"reboot failed: {err}; reboot by hand "
                                   "to try the new slot")
                raise
        return
    if dep.state in ("checking", "rolling-back", "committed", "proxy"):
        after_boot(ctx, dep_id)


def _prepare_or_restart(ctx: Context, dep_id: int) -> None:
    """``_prepare``; if it resumed from a slot prefix and the image's hash then failed,
    once more from byte 0.

    A hash mismatch after a resume most likely means the slot prefix did not survive
    the power cut as the journal believed (a disk that lied about its flush): the bytes
    on the server are still good, so starting over is the repair, not a failure.
    """
    from ferry.daemon.install.slotwriter import SlotHashMismatch
    from ferry.packaging.errors import HashMismatch

    if _resume_point(ctx.journal.get(dep_id)) is None:
        _prepare(ctx, dep_id)
        return
    try:
        _prepare(ctx, dep_id)
    except (HashMismatch, SlotHashMismatch) as err:
        log.warning("deployment %d: resumed download failed its hash (%s); starting over "
                    "from byte 0", dep_id, err)
        steps = ctx.journal.steps(dep_id)
        if steps and steps[-1].status == "started":
            ctx.journal.end_step(dep_id, steps[-1].name, "failed",
                                 f"{err}; the resumed slot prefix is not trusted, "
                                 "starting over")
        _drop_resume_point(ctx, dep_id)
        ctx.journal.set_info(dep_id, resume_failed=str(err))
        _prepare(ctx, dep_id)


def _guarded(ctx: Context, dep_id: int, fn: Callable[[Context, int], None]) -> None:
    try:
        fn(ctx, dep_id)
    except FerryError as err:
        fail(ctx, dep_id, err)
        raise


def fail(ctx: Context, dep_id: int, err: BaseException) -> None:
    dep = ctx.journal.get(dep_id)
    steps = ctx.journal.steps(dep_id)
    if steps and steps[-1].status == "started":
        ctx.journal.end_step(dep_id, steps[-1].name, "failed", str(err))
    if dep.result is None:
        ctx.journal.finish(dep_id, "failure", str(err))


class _Throttle:
    """Journal progress at most once a second: each write is an fsync'd commit."""

    def __init__(self, ctx: Context, dep_id: int, phase: str, total: int) -> None:
        self.ctx, self.dep_id, self.phase, self.total = ctx, dep_id, phase, total
        self.last = 0.0

    def __call__(self, done: int) -> None:
        self.ctx.report(self.phase, done, self.total)
        now = time.monotonic()
        if now - self.last >= 1.0 or done >= self.total:
            self.last = now
            self.ctx.journal.progress(self.dep_id, done, self.total)


def _prepare(ctx: Context, dep_id: int) -> None:
    from ferry.daemon.boot.bootloader import make_store
    from ferry.daemon.boot.slotrecord import begin_write
    from ferry.daemon.install import trust
    from ferry.packaging.limits import Limits
    from ferry.packaging.reader import BundleReader, ImageStream

    j = ctx.journal
    dep = j.get(dep_id)
    cfg = ctx.config
    staging.clean(cfg.gateway.data_dir, keep_deployment=None)

    j.begin_step(dep_id, "verify", state="verifying", detail=dep.source)

    def on_offset(offset: int, _validator: str | None) -> None:
        # the validator cannot change within a download (a changed resource fails the
        # If-Range resume); it is journalled once, right after the connection opens
        j.note_offset(dep_id, offset)

    point = _resume_point(dep)
    src = None
    if point is not None:
        try:
            src = open_source(dep.source, download_options(cfg), on_offset=on_offset,
                              resume=point)
            j.set_info(dep_id, resumed_at=point.offset)
        except FerryError as err:  # the server cannot continue: start over
            log.warning("cannot resume %s at byte %d: %s", dep.source, point.offset, err)
            point = None
    delta = None  # a delta rootfs: its chunks come by Range (daemon/install/delta.py)
    if src is None:
        from ferry.daemon.install.deltahead import delta_base, open_delta_source

        delta = open_delta_source(dep.source, download_options(cfg),
                                  base=delta_base(cfg, ctx.bootloader))
        src = delta[1] if delta is not None else None
    if src is None:
        src = open_source(dep.source, download_options(cfg), on_offset=on_offset)
    tap = _HeadTap(src.stream) if src.is_url and delta is None else None
    try:
        if src.is_url:
            j.update(dep_id, dl_validator=getattr(src.raw, "validator", None))
        limits = Limits(max_bundle_size=cfg.install.max_bundle_size)
        if cfg.install.max_bundle_size and src.size and src.size > cfg.install.max_bundle_size:
            raise InstallError(f"bundle is {src.size} bytes, over [install] max_bundle_size "
                               f"{cfg.install.max_bundle_size}")
        stream: Any = tap if tap is not None else src.stream
        env = make_store(cfg)
        keys = trust.load_trust(cfg, env)
        reader = BundleReader(stream, keys.keyring_for, limits=limits)
        desc = reader.description
        j.update(dep_id, version=desc.version)
        running = check_policy(cfg, desc.version, desc.compatible, dep.force)
        trust.check(keys, desc, reader.signer_info)
        booted, inactive = target_slot(ctx)
        j.update(dep_id, from_version=running or None, from_slot=booted.bootname,
                 to_slot=inactive.bootname)
        rootfs = desc.rootfs()
        need = 0
        if rootfs is not None:
            need = rootfs.decompressed_size or (rootfs.size if not rootfs.compressed else 0)
            if rootfs.encrypted and not rootfs.compressed and not rootfs.decompressed_size:
                need = rootfs.size - 16  # at least one byte of padding (encryption.py)
            cap = slot_capacity(inactive.device)
            if cap is not None and need > cap:
                raise SlotTooSmall(
                    f"image {rootfs.filename} needs {need} bytes but slot {inactive.name} "
                    f"({inactive.device}) holds {cap}; build a smaller image")
        aes = _decryption_key(cfg, desc, reader)
        j.end_step(dep_id, "verify", detail=f"{desc.version} signed by {reader.signer}")

        if rootfs is not None:
            # A slot that is being overwritten must not be bootable, not even as the
            # fallback: mark it bad first (one atomic env write).
            # The verified record goes first (under its lock): a `mark active` that
            # holds the lock finishes before it, and this mark_bad then undoes it.
            j.begin_step(dep_id, "invalidate", state="invalidating", detail=inactive.bootname)
            begin_write(cfg, inactive.name)  # scratch until written and verified
            ctx.bootloader.mark_bad(inactive.bootname)
            j.end_step(dep_id, "invalidate")

        total = src.size or 0
        staged: list[dict[str, Any]] = []
        skip = point.stored if point is not None and point.compressed else 0
        if delta is not None:
            skip = delta[0].member_size  # the rootfs member is not in the stream
        new_keyring: bytes | None = None
        for index, (entry, stream) in enumerate(reader.images(skip_first=skip)):
            if entry.role == "rootfs":
                j.begin_step(dep_id, "write", state="writing",
                             detail=f"{entry.filename} -> {inactive.device}")
                size = entry.decompressed_size or (entry.size if not entry.compressed else 0)
                prog = _Throttle(ctx, dep_id, "write", size or entry.size)
                on_synced = None
                resumable = not entry.compressed or (
                    entry.compressed == "zstd" and entry.decompressed_sha256 is not None)
                resumable = resumable and not entry.encrypted  # docs/install.md
                if tap is not None and index == 0 and resumable:
                    on_synced = _keep_resume_point(ctx, dep_id, tap, reader.offset - skip,
                                                   inactive.device, point,
                                                   compressed=entry.compressed is not None)
                if delta is None and isinstance(stream, ImageStream):
                    stream.verified_by_output()  # the slot writer checks the output's sha256
                res = _write_delta(ctx, dep_id, inactive, booted, entry, stream, reader, delta,
                                   desc.version, prog) if delta is not None else _write_rootfs(
                    cfg, inactive, entry, stream, desc.version, progress=prog,
                    on_synced=on_synced, start=point.synced if skip and point is not None else 0,
                    aes=aes,
                )
                j.end_step(dep_id, "write", state="written", detail=f"{res.size} bytes")
                if delta is None and reader.delta_index is not None:
                    from ferry.daemon.install.deltacache import keep_after_full

                    keep_after_full(cfg, inactive.name, entry, reader.delta_index)
                _drop_resume_point(ctx, dep_id)
            elif entry.role == "keyring":
                new_keyring = stream.read()  # at most 1 MiB, hash-checked at its end
            else:
                j.begin_step(dep_id, f"stage:{entry.filename}", state="staging")
                dest = staging.staged_path(cfg.gateway.data_dir, dep_id, entry.filename)
                from ferry.packaging.compression import decompress_stream

                lim = staging.image_limit(cfg.gateway.data_dir, entry, cfg.install)
                if entry.encrypted:
                    from ferry.packaging.encryption import open_image

                    plain = open_image(entry, stream, aes, max_output=lim.size, what=lim.what)
                else:
                    plain = decompress_stream(entry.compressed, stream, max_output=lim.size,
                                              what=lim.what)
                transformed = bool(entry.compressed) or entry.encrypted
                img = staging.stage(
                    plain, dest,
                    expected_sha256=entry.decompressed_sha256 if transformed else None,
                    progress=_Throttle(ctx, dep_id, "stage",
                                       entry.decompressed_size or entry.size),
                )
                # read the stored stream to its end so the reader checks its hash
                while stream.read(1 << 20):
                    pass
                spec = entry.target
                staged.append({
                    "filename": entry.filename, "path": img.path, "size": img.size,
                    "sha256": img.sha256,
                    "transport": spec.transport if spec else "",
                    "name": spec.name if spec else "",
                    "format": spec.format if spec else "",
                    "version": spec.version if spec else "",
                    "selector": dict(spec.selector) if spec else {},
                })
                j.end_step(dep_id, f"stage:{entry.filename}", detail=img.sha256)
        if new_keyring is not None:
            # every member and the archive's end are checked: the rotation is part of
            # this verified bundle, and in force from the next one (docs/security.md)
            j.begin_step(dep_id, "keyring", detail=f"version {desc.keyring_version}")
            path = trust.install(cfg, env, keys, desc, reader.raw_description,
                                 reader.signature, new_keyring)
            j.end_step(dep_id, "keyring", detail=str(path))
        j.set_info(dep_id, staged=staged, has_rootfs=rootfs is not None)
        j.update(dep_id, state="staged", progress_done=total, progress_total=total)
    finally:
        src.stream.close()

    if rootfs is None:
        # targets only: nothing to boot, the gateway is already "committed"
        j.begin_step(dep_id, "commit", state="committed", detail="no rootfs in bundle")
        j.end_step(dep_id, "commit")
        return
    j.update(dep_id, state="activating")


class _HeadTap:
    """Passes reads through and keeps a copy of the first bytes (the bundle's head up to
    the rootfs data) so a later process can replay them instead of downloading them."""

    LIMIT = 4 << 20

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.head: bytearray | None = bytearray()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._stream.read(n)
        if self.head is not None:
            if len(self.head) + len(data) > self.LIMIT:
                self.head = None  # not a bundle we can resume; stop copying
            else:
                self.head += data
        return data

    def readinto(self, b: Any) -> int:
        # straight into the caller's buffer (the slot writer's pool): no bytes object
        n = int(self._stream.readinto(b) or 0)
        if self.head is not None and n:
            if len(self.head) + n > self.LIMIT:
                self.head = None  # not a bundle we can resume; stop copying
            else:
                self.head += memoryview(b)[:n]
        return n


def _resume_dir(ctx: Context) -> Path:
    return Path(ctx.config.gateway.data_dir) / "resume"


def _resume_point(dep: Deployment) -> Any:
    from ferry.daemon.install.bundlesource import ResumePoint, is_url

    r = dep.info.get("resume")
    if not r or not is_url(dep.source) or not r.get("synced") or not dep.dl_validator:
        return None
    if not Path(r["head"]).exists():
        return None
    return ResumePoint(head=Path(r["head"]), data_start=int(r["data_start"]),
                       slot=Path(r["slot"]), synced=int(r["synced"]),
                       validator=dep.dl_validator, stored=int(r.get("stored", -1)),
                       compressed=bool(r.get("compressed", False)))


def _keep_resume_point(ctx: Context, dep_id: int, tap: _HeadTap, data_start: int,
                       slot: Path, point: Any, *,
                       compressed: bool) -> Callable[[int, int], None] | None:
    """Save the bundle head once; then every fsync of the slot moves the resume point."""
    head = tap.head
    tap.head = None
    if point is None:
        if head is None or len(head) < data_start:
            return None
        d = _resume_dir(ctx)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink(missing_ok=True)
        path = d / f"{dep_id}.head"
        with open(path, "wb") as f:
            f.write(bytes(head[:data_start]))
            f.flush()
            os.fsync(f.fileno())
    else:
        path = point.head
    base = {"head": str(path), "data_start": data_start, "slot": str(slot),
            "compressed": compressed}
    # a resumed zstd write reports stored offsets from where this download started
    stored_base = point.stored if point is not None and point.compressed else 0
    if point is None:
        ctx.journal.set_info(dep_id, resume={**base, "synced": 0, "stored": 0})

    def on_synced(stored: int, synced: int) -> None:
        ctx.journal.set_info(dep_id, resume={**base, "synced": synced,
                                             "stored": stored_base + stored})

    return on_synced


def _drop_resume_point(ctx: Context, dep_id: int) -> None:
    ctx.journal.set_info(dep_id, resume=None)
    d = _resume_dir(ctx)
    if d.is_dir():
        for old in d.iterdir():
            old.unlink(missing_ok=True)


def _decryption_key(cfg: Config, desc: Any, reader: Any = None) -> Any:
    """The gateway's AES key when the bundle has encrypted images (None otherwise);
    loaded while verifying, so a missing or bad key fails before any slot is touched.
    From the bundle's key envelope when this gateway is one of its recipients
    ([keyring] recipient_key), else from [keyring] decryption_key; either way it must
    match each image's signed aes-key-check (docs/bundle-format.md, "Key envelope")."""
    if not any(e.encrypted for e in desc.images):
        return None
    from ferry.packaging.encryption import EncryptionKeyError, check_key, load_key

    kr = cfg.keyring
    envelope = reader.read_envelope() if reader is not None else None
    key: Any = None
    if envelope is not None and kr.recipient_key is not None:
        assert kr.recipient_cert is not None  # config.py checks they come together
        from ferry.packaging.envelope import NoRecipient, load_recipient, open_envelope

        try:
            key = open_envelope(envelope, load_recipient(kr.recipient_key, kr.recipient_cert))
        except NoRecipient:
            if kr.decryption_key is None:
                raise
    from_envelope = key is not None
    path = kr.decryption_key
    if key is None and path is not None:
        key = load_key(path)
    if key is None:
        if envelope is not None:
            from ferry.packaging.envelope import recipients

            raise EncryptionKeyError(
                "bundle's image key is wrapped for recipients and this gateway has no "
                "recipient key ([keyring] recipient_key, recipient_cert); it would need the "
                f"key of one of: {'; '.join(recipients(envelope))}")
        raise EncryptionKeyError(
            "bundle has encrypted images and this gateway has no AES key; set [keyring] "
            "decryption_key to SWUpdate's '<key> <ivt>' file")
    for entry in desc.images:
        if entry.encrypted and not check_key(entry, key):
            if from_envelope:
                raise EncryptionKeyError(
                    f"the key in the bundle's sw-description.key does not match the signed "
                    f"aes-key-check of image {entry.filename!r}; the key envelope was "
                    "tampered with or belongs to another bundle")
            raise EncryptionKeyError(
                f"image {entry.filename!r} was encrypted with another AES key than "
                f"[keyring] decryption_key ({path})")
    return key


def _write_rootfs(cfg: Config, slot: SlotInfo, entry: Any, stream: Any, version: str, *,
                  progress: Callable[[int], None], on_synced: Callable[[int, int], None] | None,
                  start: int, aes: Any = None) -> WriteResult:
    """The rootfs into the slot, and the slot record that may let it boot.

    The record is dropped before the slot is opened (``before_open``), and written only
    after ``write_slot`` returned: every byte matched the signed sha256 and is fsynced.
    Its digest is of the bytes in the slot: the signed decompressed-sha256 (checked by
    the slot writer); for a stored image the signed sha256 (the bundle reader checked
    every byte the writer got); for a compressed image without one, the writer's own
    digest of the output of a verified stream. An encrypted image is read through
    ``open_image`` (decrypt, decompress, sealed) and counts as transformed; one whose
    plaintext is bound (``plaintext_is_bound``: its key check matched, its ivt is
    signed, it is not compressed) gets the signed decompressed-sha256 without a second
    hash pass, like a stored image gets its signed sha256.
    """
    from ferry.daemon.boot.slotrecord import begin_write, record_failed, record_verified
    from ferry.daemon.install.slotwriter import SlotHashMismatch
    from ferry.packaging.errors import HashMismatch

    compressed = bool(entry.compressed) or entry.encrypted
    decompress: Callable[[str | None, Any], Any] | None = None
    bound = False
    if entry.encrypted:
        from ferry.packaging.compression import output_limit
        from ferry.packaging.encryption import open_image, plaintext_is_bound

        # ferry's own bundles: the signed plaintext hash holds without a second pass
        bound = plaintext_is_bound(entry, aes)

        cap = output_limit(entry.decompressed_size, slot_capacity(slot.device))

        def decrypting(_kind: str | None, stored: Any) -> Any:
            return open_image(entry, stored, aes, max_output=cap,
                              what=f"image {entry.filename!r}")
        decompress = decrypting
    try:
        res = write_slot(
            stream, slot.device, compressed=entry.compressed,
            expected_size=entry.decompressed_size if compressed else entry.size,
            expected_sha256=entry.decompressed_sha256 if compressed and not bound else None,
            progress=progress, on_synced=on_synced, start=start,
            before_open=lambda: begin_write(cfg, slot.name),
            digest=compressed and entry.decompressed_sha256 is None,
            decompress=decompress,
        )
    except (HashMismatch, SlotHashMismatch):
        record_failed(cfg, slot.name, "failed its hash")
        raise
    except FerryError as err:
        record_failed(cfg, slot.name, f"failed: {str(err)[:200]}")
        raise
    sha = (entry.decompressed_sha256 or res.sha256) if compressed else entry.sha256
    assert sha is not None
    record_verified(cfg, slot.name, sha256=sha, size=res.size, version=version)
    return res


def _write_delta(ctx: Context, dep_id: int, slot: SlotInfo, booted: SlotInfo, entry: Any,
                 stream: Any, reader: Any, delta: Any, version: str,
                 progress: Callable[[int], None]) -> WriteResult:
    from ferry.daemon.install.deltainstall import write_delta_step

    return write_delta_step(ctx, dep_id, slot=slot, booted=booted, entry=entry,
                            stream=stream, reader=reader, head=delta[0],
                            options=download_options(ctx.config), version=version,
                            progress=progress)


def _activate(ctx: Context, dep_id: int) -> None:
    """One env write makes the new slot the one to try, through the same gate as
    ``ferry mark active`` (boot/slots.check_activatable) but without the re-hash: the
    record was written by this deployment's own verified write. The floor is checked
    again from the config as it is now (a resumed deployment may meet a raised one),
    and the deployment's ``force`` plays no part in it."""
    from ferry.daemon.boot.slotrecord import held
    from ferry.daemon.boot.slots import SlotNotVerified, check_activatable

    dep = ctx.journal.get(dep_id)
    assert dep.to_slot is not None
    ctx.journal.begin_step(dep_id, "activate", detail=dep.to_slot)
    ctx.report("activate", 0, 1)
    slot = ctx.config.slot(dep.to_slot)
    with held(ctx.config) as recs:
        rec = check_activatable(ctx.config, slot, recs.get(slot.name), rehash=False)
        if dep.version and rec.version != dep.version:
            raise SlotNotVerified(
                f"slot {slot.bootname} ({slot.name}) holds version {rec.version}, not "
                f"{dep.version} of this deployment: install the bundle again")
        ctx.bootloader.activate(dep.to_slot)
    boot_id = ctx.boot_id() if ctx.boot_id else ""
    ctx.journal.update(dep_id, boot_id=boot_id)
    ctx.journal.end_step(dep_id, "activate", state="rebooting")


def _reboot(ctx: Context, dep_id: int) -> None:
    boot_id = ctx.boot_id() if ctx.boot_id else ""
    ctx.journal.update(dep_id, boot_id=boot_id)
    ctx.journal.begin_step(dep_id, "reboot")
    ctx.report("reboot", 0, 1)
    killpoint("reboot.before")
    ctx.reboot()
    ctx.journal.end_step(dep_id, "reboot", detail="reboot requested")
