"""Slots: where the gateway rootfs lives, which one is running, what each one holds.

The running slot comes from the kernel command line, which the boot script writes
(``ferry.slot=`` or RAUC's ``rauc.slot=``), or from ``root=`` matched to a slot device,
so ferry works under a boot script it did not write. The path is a setting
(``bootloader.cmdline``) so tests and the simulator can point it at a file.

``mark`` is the one door by which a person (``ferry mark``, D-Bus ``Mark``) makes a
slot bootable, so the gate lives here too: a slot that is not running becomes active or
good only while ``slotrecord`` holds a verified record of its content, its version is
at or above the floor, and its bytes still hash to the record (docs/security.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.daemon.boot.slotrecord import record_slot_version as record_slot_version
from ferry.daemon.boot.slotrecord import slot_versions as slot_versions
from ferry.daemon.config import Config, SlotConfig
from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.boot.slotrecord import Records, SlotRecord
    from ferry.daemon.boot.state import Bootloader

# A slot as configured: name ("rootfs.0"), bootname ("A"), device, bootpart.
Slot = SlotConfig


class SlotError(FerryError):
    """The running slot or a named slot cannot be determined."""


def _resolve(dev: str) -> str:
    for prefix, folder in (("PARTUUID=", "by-partuuid"), ("UUID=", "by-uuid"),
                           ("PARTLABEL=", "by-partlabel"), ("LABEL=", "by-label")):
        if dev.startswith(prefix):
            dev = f"/dev/disk/{folder}/{dev[len(prefix):]}"
            break
    return os.path.realpath(dev)


def booted_from_cmdline(cmdline: str, slots: tuple[Slot, ...]) -> Slot | None:
    """The slot named by ferry.slot=, rauc.slot= or root= (in that order), or None."""
    args: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep:
            args[key] = value  # the last one wins, as in the kernel
    for key in ("ferry.slot", "rauc.slot"):
        if key in args:
            for s in slots:
                if args[key] in (s.bootname, s.name, s.bootpart):
                    return s
            raise SlotError(
                f"kernel command line says {key}={args[key]}, which is no configured slot"
            )
    root = args.get("root")
    if root:
        want = _resolve(root)
        for s in slots:
            if str(s.device) == root or _resolve(str(s.device)) == want:
                return s
    return None


def booted_slot(config: Config) -> Slot:
    path = config.bootloader.cmdline
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SlotError(f"cannot read {path}: {err.strerror}") from err
    slot = booted_from_cmdline(text, config.slots)
    if slot is None:
        raise SlotError(
            f"{path} names no slot: the boot script must add ferry.slot=<bootname> "
            "(or rauc.slot=), or root= must be one of the slot devices"
        )
    return slot


def other_slot(config: Config, bootname: str) -> Slot:
    """The slot to install into: the first slot that is not ``bootname``."""
    for s in config.slots:
        if s.bootname != bootname:
            return s
    raise SlotError("the config has no second [[slot]]; an A/B update needs two")


def inactive_slot(config: Config, bootloader: Bootloader) -> Slot:
    return other_slot(config, bootloader.booted())


def resolve_slot(config: Config, bootloader: Bootloader, which: str) -> Slot:
    """``booted``, ``other`` or a slot name / boot name."""
    if which == "booted":
        return config.slot(bootloader.booted())
    if which == "other":
        return inactive_slot(config, bootloader)
    return config.slot(which)


MARK_STATES = ("good", "bad", "active")

# progress(done, total) while a slot is re-hashed
HashProgress = Callable[[int, int], None]


class SlotNotVerified(SlotError):
    """The slot's content has no verified record, or no longer matches it."""


def mark(config: Config, bootloader: Bootloader, state: str, which: str, *,
         progress: HashProgress | None = None) -> tuple[str, str]:
    """``ferry mark`` and D-Bus Mark: one env write; returns (slot name, message).

    *bad* is always allowed: it only takes a slot out of the boot order. *active* or
    *good* on a slot that is not running makes it bootable, so it passes the gate
    (:func:`check_activatable`: a verified record, the version floor, a re-hash of the
    slot) under the record lock, and the env write happens before the lock is let go:
    an install that starts meanwhile clears the record only after this activation,
    and its own invalidation then marks the slot bad again.

    The running slot: *good* is the commit after a healthy boot (ferry-mark-good.service
    runs it every boot) and is always allowed; the slot is running whatever ferry
    says, and refusing would only spend its boot attempts. *active* on it (keep booting
    it, dropping a pending trial of the other slot) needs no record, since a factory
    image or one the bootloader fell back to is what runs now, but it must still be at
    or above the version floor.
    """
    from ferry.daemon.boot.slotrecord import held

    slot = resolve_slot(config, bootloader, which or "booted")
    if state not in MARK_STATES:
        raise SlotError(f"unknown mark state {state!r}: use good, bad or active")
    message = f"marked {slot.name} ({slot.bootname}) {state}"
    if state == "bad":
        bootloader.mark_bad(slot.bootname)
        return slot.name, message
    try:
        running = bootloader.booted() == slot.bootname
    except FerryError:
        running = False  # cannot tell: treat it as the slot that is not running
    if running:
        if state == "active":
            check_running_floor(config, slot)
            bootloader.activate(slot.bootname)
        else:
            bootloader.mark_good(slot.bootname)
        return slot.name, message
    with held(config) as recs:
        rec = check_activatable(config, slot, recs.get(slot.name), progress=progress,
                                records=recs)
        if state == "active":
            bootloader.activate(slot.bootname)
        else:
            bootloader.mark_good(slot.bootname)
    return slot.name, f"{message} (holds {rec.version}, sha256 verified)"


def check_activatable(config: Config, slot: Slot, rec: SlotRecord | None, *,
                      rehash: bool = True, progress: HashProgress | None = None,
                      records: Records | None = None) -> SlotRecord:
    """Raise unless ``slot`` may be made bootable; returns its verified record.

    The record must say the slot's content was written and matched a signed sha256,
    its version must be at or above ``[install] min_version``, and (``rehash``) the
    slot's bytes must still hash to the recorded digest. A slot that fails the
    re-hash loses its record (through ``records``, the held lock), so the next
    refusal says why without reading the slot again.
    """
    from ferry.daemon.boot.slotrecord import FAILED, WRITING, SlotRecord
    from ferry.daemon.boot.slotrecord import rehash as do_rehash
    from ferry.daemon.versions import check_floor

    who = f"slot {slot.bootname} ({slot.name})"
    todo = "install a bundle to it first"
    if rec is None or not rec.verified:
        if rec is None:
            why = "ferry has no record of writing it"
        elif rec.state == WRITING:
            why = f"its last write, started {rec.when}, did not finish"
        elif rec.state == FAILED:
            why = f"its last write {rec.reason or 'failed'}"
        elif rec.version:
            why = (f"version {rec.version} was recorded without a verified digest, by "
                   "factory provisioning or an older ferry")
        else:
            why = "ferry has no verified digest of it"
        raise SlotNotVerified(f"{who} holds no verified image ({why}): {todo}")
    check_floor(rec.version, config.install.min_version, what=f"{who} holds version",
                fix="install a newer bundle to it")
    if not rehash:
        return rec
    assert rec.sha256 is not None and rec.size is not None
    try:
        digest, got = do_rehash(slot.device, rec.size, progress=progress)
    except OSError as err:
        raise SlotError(f"cannot read {who} at {slot.device} to check it: "
                        f"{err.strerror or err}") from err
    if got == rec.size and digest == rec.sha256:
        return rec
    if got < rec.size:
        found = f"it holds only {got} of the {rec.size} bytes verified {rec.when}"
    else:
        found = (f"its first {rec.size} bytes hash to {digest[:16]}..., not the "
                 f"{rec.sha256[:16]}... verified {rec.when}")
    if records is not None:
        records.put(SlotRecord(slot=slot.name, state=FAILED, at=time.time(),
                               reason="was verified, but the slot changed since: "
                               + found))
    raise SlotNotVerified(f"{who} no longer holds the image ferry verified ({found}; it was "
                          f"changed or is corrupt): install a bundle to it again")


def check_running_floor(config: Config, slot: Slot) -> None:
    """The running slot against the floor: its own version, else its recorded one."""
    from ferry.daemon.boot.slotrecord import get_record
    from ferry.daemon.versions import check_floor

    floor = config.install.min_version
    if not floor:
        return
    version = config.gateway.running_version()
    if not version:
        rec = get_record(config, slot.name)
        version = rec.version if rec is not None else ""
    who = f"slot {slot.bootname} ({slot.name})"
    if not version:
        raise SlotError(f"cannot tell which version {who} runs ([gateway] version or "
                        "version_file), so the floor in [install] min_version cannot be "
                        "checked; set one of them")
    check_floor(version, floor, what=f"{who} runs version",
                fix="install a newer bundle to the other slot and activate that")


# --- what each slot holds: the record lives in slotrecord --------------------------
