"""Slots: where the gateway rootfs lives, which one is running, what each one holds.

The running slot comes from the kernel command line, which the boot script writes
(``ferry.slot=`` or RAUC's ``rauc.slot=``), or from ``root=`` matched to a slot device,
so ferry works under a boot script it did not write. The path is a setting
(``bootloader.cmdline``) so tests and the simulator can point it at a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.daemon.config import Config, SlotConfig
from ferry.errors import FerryError

if TYPE_CHECKING:
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


def mark(config: Config, bootloader: Bootloader, state: str, which: str) -> tuple[str, str]:
    """``ferry mark`` and D-Bus Mark: one env write; returns (slot name, message)."""
    slot = resolve_slot(config, bootloader, which or "booted")
    if state == "good":
        bootloader.mark_good(slot.bootname)
    elif state == "bad":
        bootloader.mark_bad(slot.bootname)
    elif state == "active":
        bootloader.activate(slot.bootname)
    else:
        raise SlotError(f"unknown mark state {state!r}: use good, bad or active")
    return slot.name, f"marked {slot.name} ({slot.bootname}) {state}"


# --- what each slot holds -----------------------------------------------------------

def _status_path(config: Config) -> Path:
    return config.gateway.data_dir / "slots.json"


def slot_versions(config: Config) -> dict[str, str]:
    """Installed version per slot name, as recorded by record_slot_version."""
    try:
        data = json.loads(_status_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(v.get("version", "")) for k, v in data.items() if isinstance(v, dict)}


def record_slot_version(config: Config, slot_name: str, version: str) -> None:
    """Remember what was written to a slot (atomic replace, fsynced)."""
    path = _status_path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[slot_name] = {"version": version}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
